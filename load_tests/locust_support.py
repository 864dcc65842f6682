"""The Locust file's plain parts, importable without Locust.

Importing ``locust`` monkey-patches the interpreter with gevent (sockets, ssl, threads),
so tests and tools that only need these helpers must not import ``load_tests.locustfile``
in their own process; they import this module instead.
"""

from __future__ import annotations

import os
from typing import Any


def env_ints(name: str, default: str) -> list[int]:
    """The comma-separated positive integers of environment variable ``name``, in order and
    without repeats (a repeated resolution would double its task's weight); ``SystemExit``
    naming the variable otherwise, which Locust shows as the reason it did not start."""
    text = os.environ.get(name, default)
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"{name}: expected integers like 128,256, got {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"{name}: expected positive integers, got {text!r}")
    return list(dict.fromkeys(values))


def failure_reason(status: int, payload: Any, error: object = None) -> str | None:
    """Why a response is a failure (``None``: it is not). Short and stable, because
    Locust groups failures by this text: the status and the service's error code."""
    if status == 0:
        return f"transport error: {error}"
    if status != 200:
        code = None
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            code = payload["error"].get("code")
        return f"{status} {code or 'no error code'}"
    if not isinstance(payload, dict) or not isinstance(payload.get("probability"), int | float):
        return "200 without a probability"
    return None
