"""The routes' dependencies, as ``Annotated`` types: settings, the running service, auth.

Authentication and the per-client rate limit are one router-level dependency
(:func:`require_api_key` on the ``/v1`` and ``/dicomweb`` routers in :mod:`service.app`),
so no route can forget either, and the limit always comes after the key is checked: a
bucket is only ever made for a configured key (named by its digest, see
:mod:`service.ratelimit`), never for whatever a client presents. Without keys the bucket
is the client address's. ``/healthz``, ``/readyz`` and ``/metrics`` are outside those
routers and never limited.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from service.errors import NotReadyError, RateLimitedError, UnauthorizedError
from service.middleware import EndpointLabels
from service.pacs.runner import JobRunner
from service.pipeline import Pipeline
from service.ratelimit import RateLimiter, address_label, key_label
from service.registry import Registry
from service.runtime import ServiceRuntime
from service.settings import Settings, get_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_runtime(request: Request) -> ServiceRuntime:
    runtime: ServiceRuntime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[ServiceRuntime, Depends(get_runtime)]


def get_pipeline(runtime: RuntimeDep) -> Pipeline:
    if not runtime.ready or runtime.pipeline is None:
        raise NotReadyError(runtime.detail)
    return runtime.pipeline


def get_registry(runtime: RuntimeDep) -> Registry:
    if not runtime.ready or runtime.registry is None:
        raise NotReadyError(runtime.detail)
    return runtime.registry


def get_runner(runtime: RuntimeDep) -> JobRunner:
    if not runtime.ready or runtime.runner is None:
        raise NotReadyError(runtime.detail)
    return runtime.runner


PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]
RegistryDep = Annotated[Registry, Depends(get_registry)]


def presented_key(request: Request) -> bytes | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, if any."""
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip().encode()
    key = request.headers.get("x-api-key", "").strip()
    return key.encode() if key else None


def rate_limiter(request: Request, settings: Settings) -> RateLimiter | None:
    """The app's limiter (made at its first request), or None when the rate is 0 (off).

    Kept on ``app.state`` so each app (each test's) has its own; made lazily because only
    the dependencies see the app's settings. Called on the event loop only (from the async
    :func:`require_api_key`), so two requests cannot both make one.
    """
    if settings.rate_limit_per_minute <= 0:
        return None
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        request.app.state.rate_limiter = limiter
    return limiter


def endpoint_label(request: Request) -> str:
    """The request's route template (``/v1/predict``), the metrics' bounded ``endpoint``
    label, as the access middleware names it (the matched route alone knows only its path
    inside its router: ``/predict``)."""
    labels: EndpointLabels | None = getattr(request.app.state, "endpoint_labels", None)
    if labels is None:
        labels = EndpointLabels(request.app.router.routes)
        request.app.state.endpoint_labels = labels
    return labels(request.scope)


def enforce_rate_limit(request: Request, settings: Settings, label: str) -> None:
    """429 :class:`RateLimitedError` with ``Retry-After`` when ``label``'s bucket is empty."""
    limiter = rate_limiter(request, settings)
    if limiter is None:
        return
    decision = limiter.acquire(label)
    if not decision.allowed:
        runtime: ServiceRuntime = request.app.state.runtime
        runtime.metrics.rate_limited.labels(endpoint=endpoint_label(request)).inc()
        raise RateLimitedError(settings.rate_limit_per_minute, decision.retry_after_s)


async def require_api_key(request: Request, settings: SettingsDep) -> None:
    """401 unless no keys are configured or the request presents one of them; then 429
    when that key (without keys: the client address) is over the rate limit.

    Every configured key is compared (``hmac.compare_digest``, constant time per key, no
    early exit), so the response time does not tell which key came close. Async so that
    it runs on the event loop: no thread-pool hop per request, and the limiter is only
    touched from one thread.
    """
    keys = settings.api_key_bytes()
    if not keys:
        client = request.client
        enforce_rate_limit(request, settings, address_label(client.host if client else None))
        return
    presented = presented_key(request)
    if presented is None:
        raise UnauthorizedError("this endpoint needs an API key")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    if not matched:
        raise UnauthorizedError("the API key is not valid")
    enforce_rate_limit(request, settings, key_label(presented))
