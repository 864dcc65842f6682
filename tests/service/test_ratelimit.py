"""The per-client token buckets (service/ratelimit.py), on a fake clock."""

from __future__ import annotations

import threading

import pytest

from service.ratelimit import RateLimiter, address_label, key_label


class FakeClock:
    """A monotonic clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_a_burst_is_allowed_then_refused(clock: FakeClock) -> None:
    limiter = RateLimiter(6, 3, clock=clock)  # one token per 10 s, three at once
    assert [limiter.acquire("a").allowed for _ in range(3)] == [True, True, True]
    refused = limiter.acquire("a")
    assert not refused.allowed
    assert refused.retry_after_s == 10


def test_tokens_refill_at_the_rate_and_retry_after_counts_down(clock: FakeClock) -> None:
    limiter = RateLimiter(6, 3, clock=clock)
    for _ in range(3):
        limiter.acquire("a")
    clock.advance(2.5)  # a quarter token back: 7.5 s to go, Retry-After rounds up
    assert limiter.acquire("a").retry_after_s == 8
    clock.advance(7.4)
    assert limiter.acquire("a").retry_after_s == 1  # 0.1 s to go: never 0
    clock.advance(0.1)
    assert limiter.acquire("a").allowed
    assert not limiter.acquire("a").allowed


def test_refill_stops_at_the_burst(clock: FakeClock) -> None:
    limiter = RateLimiter(60, 2, clock=clock)  # one per second
    limiter.acquire("a")
    clock.advance(3600)
    assert [limiter.acquire("a").allowed for _ in range(3)] == [True, True, False]


def test_a_refused_request_takes_no_token(clock: FakeClock) -> None:
    limiter = RateLimiter(60, 1, clock=clock)
    assert limiter.acquire("a").allowed
    for _ in range(50):  # hammering while empty does not push the next token back
        assert not limiter.acquire("a").allowed
    clock.advance(1.0)
    assert limiter.acquire("a").allowed


def test_retry_after_is_whole_seconds_without_float_noise(clock: FakeClock) -> None:
    limiter = RateLimiter(0.5, 1, clock=clock)  # one token per 120 s
    limiter.acquire("a")
    assert limiter.acquire("a").retry_after_s == 120
    clock.advance(0.1 + 0.2)  # 0.30000000000000004 s
    assert limiter.acquire("a").retry_after_s == 120  # 119.7 rounds up, not 121


def test_two_clients_are_independent(clock: FakeClock) -> None:
    limiter = RateLimiter(6, 2, clock=clock)
    assert limiter.acquire("a").allowed and limiter.acquire("a").allowed
    assert not limiter.acquire("a").allowed
    assert limiter.acquire("b").allowed and limiter.acquire("b").allowed
    assert not limiter.acquire("b").allowed


def test_idle_buckets_are_forgotten_once_full_again(clock: FakeClock) -> None:
    limiter = RateLimiter(60, 5, clock=clock)  # full again 5 s after the last request
    for name in "abc":
        limiter.acquire(name)
    assert len(limiter) == 3
    clock.advance(4.9)
    limiter.acquire("c")
    assert len(limiter) == 3  # not idle long enough yet
    clock.advance(0.2)  # a and b: 5.1 s idle, full again; c: 0.2 s
    limiter.acquire("d")
    assert len(limiter) == 2


def test_a_forgotten_bucket_comes_back_full(clock: FakeClock) -> None:
    limiter = RateLimiter(60, 2, clock=clock)
    limiter.acquire("a")
    limiter.acquire("a")
    clock.advance(2.0)
    limiter.acquire("b")  # sweeps a
    assert len(limiter) == 1
    assert [limiter.acquire("a").allowed for _ in range(3)] == [True, True, False]


def test_the_number_of_clients_is_capped(clock: FakeClock) -> None:
    limiter = RateLimiter(1, 1, clock=clock, max_clients=100)
    for i in range(10_000):  # a client with many addresses, none idle long enough
        limiter.acquire(f"addr:{i}")
    assert len(limiter) == 100
    assert not limiter.acquire("addr:9999").allowed  # the most recent are the ones kept


def test_the_least_recently_used_goes_first_at_the_cap(clock: FakeClock) -> None:
    limiter = RateLimiter(1, 1, clock=clock, max_clients=2)
    limiter.acquire("a")
    limiter.acquire("b")
    limiter.acquire("a")  # a used again: b is now the oldest
    limiter.acquire("c")  # evicts b
    assert not limiter.acquire("a").allowed  # still tracked, still empty
    assert limiter.acquire("b").allowed  # forgotten: a fresh bucket (evicts c)


def test_labels_never_hold_the_key() -> None:
    key = b"s3cret-api-key-value"
    label = key_label(key)
    assert "s3cret" not in label and key.decode() not in label
    assert label == key_label(key) and label != key_label(b"another key")
    assert len(label) == len("key:") + 16
    assert address_label("10.0.0.7") == "addr:10.0.0.7"
    assert address_label(None) == "addr:unknown"


def test_thread_safe_counting() -> None:
    limiter = RateLimiter(1e-6, 1000)  # no refill to speak of: exactly 1000 allowed
    allowed: list[int] = []

    def worker() -> None:
        allowed.append(sum(limiter.acquire("a").allowed for _ in range(500)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sum(allowed) == 1000


@pytest.mark.parametrize(
    ("per_minute", "burst", "max_clients"), [(0, 1, 10), (-1, 1, 10), (1, 0, 10), (1, 1, 0)]
)
def test_invalid_parameters(per_minute: float, burst: int, max_clients: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        RateLimiter(per_minute, burst, max_clients=max_clients)
