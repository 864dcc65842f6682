"""The routes' dependencies, as ``Annotated`` types: settings, the running service, auth.

Authentication is a router-level dependency (:func:`require_api_key` on the ``/v1``
router in :mod:`service.app`), so no route can forget it.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from service.errors import NotReadyError, UnauthorizedError
from service.pacs.runner import JobRunner
from service.pipeline import Pipeline
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


def require_api_key(request: Request, settings: SettingsDep) -> None:
    """401 unless no keys are configured or the request presents one of them.

    Every configured key is compared (``hmac.compare_digest``, constant time per key, no
    early exit), so the response time does not tell which key came close.
    """
    keys = settings.api_key_bytes()
    if not keys:
        return
    presented = presented_key(request)
    if presented is None:
        raise UnauthorizedError("this endpoint needs an API key")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    if not matched:
        raise UnauthorizedError("the API key is not valid")
