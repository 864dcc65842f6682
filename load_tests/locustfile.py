"""Locust load test of a running sharpcxr service: ``POST /v1/predict`` per resolution.

Every user posts the sweep's synthetic phantom (:func:`load_tests.sweep.phantom_dicom`,
the same bytes as ``python -m load_tests.sweep``) as a raw ``application/dicom`` body, with
one task per resolution, equal weights, and the request name ``predict r=<R>`` so Locust's
statistics and CSVs have a row per resolution. Users wait 0 s between requests (closed
loop, like the sweep's clients), so ``-u`` is the concurrency.

    locust -f load_tests/locustfile.py --headless -u 4 -r 4 -t 30s \\
        --host http://127.0.0.1:8000 --csv load_tests/results/locust

Settings (environment variables, read when Locust imports this file):

* ``SHARPCXR_LOCUST_RESOLUTIONS``: comma-separated, default ``256``;
* ``SHARPCXR_LOCUST_SIZE``: the phantom's rows = columns, default ``2048``;
* ``SHARPCXR_LOCUST_EXPLAIN``: ``true`` (default; mask + boxes) or ``false``;
* ``SHARPCXR_LOCUST_API_KEY``: sent as ``X-API-Key`` when the service has
  ``SHARPCXR_API_KEYS``.

A 503 (overloaded, deadline, not ready) is a failure named by the service's error code,
e.g. ``503 overloaded``, so Locust's failure table says why; so is any other non-200, and a
200 without a probability.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache

from locust import FastHttpUser, constant

from load_tests.locust_support import env_ints, failure_reason
from load_tests.sweep import phantom_dicom

RESOLUTIONS = env_ints("SHARPCXR_LOCUST_RESOLUTIONS", "256")
SIZE = env_ints("SHARPCXR_LOCUST_SIZE", "2048")[0]
if SIZE < 32:  # the same floor as the sweep's --size
    raise SystemExit(f"SHARPCXR_LOCUST_SIZE: at least 32, got {SIZE}")
EXPLAIN = os.environ.get("SHARPCXR_LOCUST_EXPLAIN", "true").strip().lower() not in ("0", "false")
API_KEY = os.environ.get("SHARPCXR_LOCUST_API_KEY") or None


@cache
def body() -> bytes:
    """The phantom, built once per Locust process (a 2048 px one takes a moment)."""
    return phantom_dicom(SIZE)


def predict_task(resolution: int) -> Callable[[FastHttpUser], None]:
    """The task that posts the phantom at ``resolution``."""
    params = f"resolution={resolution}&explain={'true' if EXPLAIN else 'false'}"

    def predict(user: FastHttpUser) -> None:
        headers = {"Content-Type": "application/dicom"}
        if API_KEY:
            headers["X-API-Key"] = API_KEY
        with user.client.post(
            f"/v1/predict?{params}",
            data=body(),
            headers=headers,
            name=f"predict r={resolution}",
            catch_response=True,
        ) as response:
            try:
                payload = response.json() if response.text else None
            except ValueError:
                payload = None
            # ``error`` is only there when the client itself saw a failure
            error = getattr(response, "error", None)
            reason = failure_reason(response.status_code or 0, payload, error)
            if reason is None:
                response.success()
            else:
                response.failure(reason)

    predict.__name__ = f"predict_{resolution}"
    return predict


class PredictUser(FastHttpUser):
    """One closed-loop client: back-to-back predictions, a resolution chosen per request."""

    wait_time = constant(0)
    network_timeout = 300.0  # a 1024 px explain on a busy CPU box can take seconds
    connection_timeout = 5.0
    tasks = [predict_task(r) for r in RESOLUTIONS]  # noqa: RUF012 - Locust reads a list

    def on_start(self) -> None:
        body()  # build the phantom before the first timed request
