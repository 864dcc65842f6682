"""Per-client token buckets: ``SHARPCXR_RATE_LIMIT_PER_MINUTE``, ``SHARPCXR_RATE_LIMIT_BURST``.

Each client (an API key, or a client address when no keys are configured) has a bucket of
``burst`` tokens that refills at ``per_minute / 60`` tokens per second; a request takes
one token, and a request that finds less than one is refused with the whole seconds until
one has refilled (``Retry-After``).

Clients are named by :func:`key_label`, never by the key itself: the first 16 hex digits
of the key's SHA-256 digest, so neither the limiter's memory, nor a log line, nor a
debugger shows a secret.

Memory is bounded twice over: a bucket left alone long enough to be full again is exactly
a new bucket, so it is dropped (checked from the least recently used end at each call,
amortised O(1)); and at most ``max_clients`` buckets are kept, the least recently used
going first when a new client arrives at the cap (such a client then starts again from a
full bucket: with more distinct addresses than the cap an attacker gains a burst each,
which bounds memory, not abuse; API keys are never that many).

Thread-safe: one lock around each call (the service calls it from the event loop, where
the lock is never contended).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: default hard cap on clients tracked at once (~100 bytes each)
MAX_CLIENTS = 10_000


def key_label(key: bytes) -> str:
    """The name of an API key's bucket: 16 hex digits of its SHA-256 (not reversible)."""
    return "key:" + hashlib.sha256(key).hexdigest()[:16]


def address_label(host: str | None) -> str:
    """The name of a client address's bucket (``"addr:unknown"`` without one)."""
    return f"addr:{host or 'unknown'}"


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float  # clock reading (s) when ``tokens`` was last brought up to date


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one request: allowed, or refused with ``retry_after_s`` (whole s)."""

    allowed: bool
    retry_after_s: int = 0
    remaining: float = 0.0


class RateLimiter:
    """Token buckets keyed by a client label.

    ``per_minute``: the sustained rate (> 0); ``burst``: bucket capacity, requests a client
    may send at once (>= 1); ``clock``: a monotonic clock in seconds (injectable for tests);
    ``max_clients``: the most buckets held at once.
    """

    def __init__(
        self,
        per_minute: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be > 0 (0 means no limiter at all)")
        if burst < 1:
            raise ValueError("burst must be >= 1")
        if max_clients < 1:
            raise ValueError("max_clients must be >= 1")
        self.per_minute = per_minute
        self.rate = per_minute / 60.0  # tokens per second
        self.capacity = float(burst)
        self.max_clients = max_clients
        #: seconds after which an untouched bucket is full again, i.e. forgettable
        self.refill_s = self.capacity / self.rate
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, label: str) -> Decision:
        """Take one token from ``label``'s bucket, or say how long until there is one."""
        with self._lock:
            now = self._clock()
            self._forget_idle(now)
            bucket = self._buckets.get(label)
            if bucket is None:
                if len(self._buckets) >= self.max_clients:
                    self._buckets.popitem(last=False)
                bucket = _Bucket(self.capacity, now)
                self._buckets[label] = bucket
            else:
                elapsed = max(0.0, now - bucket.updated)  # a clock never runs back; be sure
                bucket.tokens = min(self.capacity, bucket.tokens + elapsed * self.rate)
                bucket.updated = now
                self._buckets.move_to_end(label)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return Decision(True, 0, bucket.tokens)
            # at least 1 s: Retry-After is whole seconds, and 0 would invite a busy loop; the
            # nanosecond off the wait keeps float noise (10.000000000002) from adding a second
            wait_s = (1.0 - bucket.tokens) / self.rate
            return Decision(False, max(1, math.ceil(wait_s - 1e-9)), bucket.tokens)

    def _forget_idle(self, now: float) -> None:
        # The least recently used bucket is the first; stop at the first one still needed.
        while self._buckets:
            label, bucket = next(iter(self._buckets.items()))
            if now - bucket.updated < self.refill_s:
                return
            del self._buckets[label]
