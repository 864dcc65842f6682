"""The service's settings: one pydantic-settings object, environment prefix ``SHARPCXR_``.

Nothing else in the service reads the environment. Routes get the object through
:func:`get_settings` (a dependency tests override); ``create_app(settings)`` takes one
explicitly. Lists accept a comma-separated string (``SHARPCXR_RESOLUTIONS=256,512``) or JSON.
"""

from __future__ import annotations

import os
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cxrmodel.resolution import RULE, check_resolution
from cxrmodel.vocab import Backend, Device


class GateMode(StrEnum):
    """What the gate does with an image the model should not assess (DESIGN, v1 additions).

    ``refuse``: header and blank-image findings are a 422 with the finding's code; an
    out-of-distribution score is flagged (200, ``not_assessable``). ``flag``: every finding
    is a 200 with ``not_assessable``. ``off``: no gate (the OOD score is still reported).
    """

    REFUSE = "refuse"
    FLAG = "flag"
    OFF = "off"


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def parse_ae_address(text: str) -> tuple[str, str, int]:
    """``"AET@host:port"`` -> ``(aet, host, port)``; ValueError saying the form otherwise."""
    aet, at, address = text.partition("@")
    host, colon, port = address.rpartition(":")
    if not (at and colon and aet.strip() and 0 < len(aet.strip()) <= 16 and host):
        raise ValueError(
            f"an AE address is AET@host:port (AET at most 16 characters), got {text!r}"
        )
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"the port of AE address {text!r} must be 1-65535")
    return aet.strip(), host.strip("[]"), int(port)


class Settings(BaseSettings):
    """Every knob of the service. Defaults serve the demo models on loopback."""

    model_config = SettingsConfigDict(env_prefix="SHARPCXR_", extra="ignore", frozen=True)

    # --- models (DESIGN's contract)
    models_dir: Path = Field(Path("models"), description="directory holding manifest.json")
    resolutions: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="resolutions to load; empty = every one in the manifest"
    )
    default_resolution: int | None = Field(
        None, description="resolution when a request names none; unset = the highest loaded"
    )
    backend: Backend = Backend.ONNXRUNTIME
    device: Device = Device.CPU
    gate: GateMode = Field(
        GateMode.REFUSE, description="refuse | flag | off: what happens to unassessable images"
    )

    # --- batching and load
    max_batch_size: int = Field(8, ge=1, le=256)
    batch_timeout_ms: float = Field(5.0, ge=0, le=10_000)
    max_queue: int = Field(64, ge=1, description="requests waiting per resolution before 503")
    request_timeout_s: float = Field(
        60.0, gt=0, description="per-request deadline, upload to response"
    )
    decode_workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="threads decoding DICOM and post-processing (default: one per core)",
    )
    intra_op_threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="threads per inference call (ONNX Runtime / torch intra-op)",
    )

    # --- input limits
    max_upload_mb: float = Field(100.0, gt=0)
    max_pixels: int = Field(36_000_000, ge=1, description="rows * columns budget, from the header")
    reduced_decode: Literal["accurate", "fast", "off"] = Field(
        "accurate",
        description="JPEG 2000 / HTJ2K decoded only to the wavelet level the request needs: "
        "accurate = at least twice the model resolution, then area-resized (model input "
        "within 0.022 of the full decode); fast = at least the model resolution (within "
        "0.06; 3-4x faster to 1024 px); off = always the full image",
    )
    heatmap_max_side: int = Field(1024, ge=64, description="longest side of heatmap PNGs")

    # --- PACS integration (DESIGN "DICOMweb and DIMSE"): jobs, C-STORE SCP, delivery
    data_dir: Path = Field(Path("data"), description="where the default job store lives")
    jobs_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the job store and outbox; unset = SQLite (WAL) at "
        "<data_dir>/jobs.sqlite",
    )
    job_workers: int = Field(2, ge=1, le=64, description="jobs processed at the same time")
    retain_received_hours: float = Field(
        24.0,
        ge=0,
        description="how long a finished job keeps the instance it received, for the "
        "viewer's worklist to show the image; 0 = deleted as soon as the job is finished",
    )
    stow_max_request_mb: float = Field(
        1024.0, gt=0, description="one STOW-RS request, all parts together (parts: max_upload_mb)"
    )
    stow_timeout_s: float = Field(
        600.0, gt=0, description="one STOW-RS request, upload to answer (parts already stored stay)"
    )
    dicom_port: int | None = Field(
        None, ge=0, le=65535, description="C-STORE SCP port; unset = no DICOM listener"
    )
    dicom_host: str = Field("127.0.0.1", description="address the C-STORE SCP binds")
    dicom_ae_title: str = Field("SHARPCXR", min_length=1, max_length=16)
    dicom_acse_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="a DICOM connection must complete its association request within this "
        "(each connection that does not holds one of dicom_max_associations until then)",
    )
    dicom_max_associations: int = Field(
        32, ge=1, le=1024, description="DICOM associations at once; more are rejected (transient)"
    )
    dicom_allowed_aes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="calling AE titles allowed to associate; empty = any caller",
    )
    results_stow_url: str | None = Field(
        None,
        description="DICOMweb base URL (…/dicom-web or …/dicom-web/studies) results are "
        "stored to by STOW-RS; user:password@ in it is sent as HTTP basic auth",
    )
    results_ae: str | None = Field(None, description="AET@host:port results are sent to by C-STORE")
    delivery_max_attempts: int = Field(
        48, ge=1, description="attempts before a delivery fails (48: about 6 hours)"
    )
    delivery_backoff_s: float = Field(
        2.0, gt=0, description="first retry delay; doubles per attempt, capped at 10 minutes"
    )

    # --- hardening: codec isolation, slow clients, rate limits, shutdown (README "Hardening")
    decode_isolation: Literal["process", "thread"] = Field(
        "process",
        description="process = every image is decoded in a worker process with a time and "
        "memory limit, so a codec that crashes or hangs costs only that request; thread = "
        "in the service process (faster by the pixel transfer, no protection)",
    )
    decode_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="one image's decode in a worker (wall clock); past it the worker is "
        "killed and restarted and the request answered 422 decode_timeout",
    )
    decode_memory_mb: int = Field(
        3072,
        ge=512,
        description="address-space limit of each decode worker (RLIMIT_AS); an image whose "
        "decoding needs more is answered 422 decode_memory_exceeded",
    )
    decoder_plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="modules imported in each decode worker before its first image, e.g. "
        "a site's own pydicom pixel-decoder plugin (process isolation only)",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="a connection must send a complete request head within this"
    )
    upload_idle_timeout_s: float = Field(
        30.0, gt=0, description="longest pause between two chunks of an upload before 408"
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, description="an idle keep-alive connection is closed after this"
    )
    max_connections: int = Field(
        512, ge=1, description="open connections plus requests in progress; past it, 503"
    )
    rate_limit_per_minute: float = Field(
        0.0,
        ge=0,
        description="requests per minute per API key (per client address without keys) "
        "on /v1 and /dicomweb; 0 = no limit; over it, 429 with Retry-After",
    )
    rate_limit_burst: int = Field(
        30, ge=1, description="requests a key may send at once before the rate applies"
    )
    shutdown_timeout_s: float = Field(
        60.0,
        gt=0,
        description="on SIGTERM: how long accepted requests have to finish before exit",
    )
    drain_min_s: float = Field(
        0.0,
        ge=0,
        description="on SIGTERM: keep answering (503 to new work, /readyz 503) at least "
        "this long, so load balancers see the service leave before it closes its port",
    )

    # --- security and process
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="accepted API keys; empty = no authentication"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator(
        "resolutions", "api_keys", "dicom_allowed_aes", "decoder_plugins", mode="before"
    )
    @classmethod
    def _lists_from_commas(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("results_ae")
    @classmethod
    def _ae_address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_ae_address(value)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("resolutions")
    @classmethod
    def _resolution_rule(cls, value: list[int]) -> list[int]:
        bad = []
        for resolution in value:
            try:
                check_resolution(resolution)
            except ValueError:
                bad.append(resolution)
        if bad:
            raise ValueError(f"resolutions must each be {RULE}, got {bad}")
        return sorted(set(value))

    @model_validator(mode="after")
    def _listener_not_open_to_all(self) -> Settings:
        if (
            self.dicom_port is not None
            and not self.dicom_allowed_aes
            and self.dicom_host not in ("127.0.0.1", "::1", "localhost")
        ):
            raise ValueError(
                f"the C-STORE listener on {self.dicom_host} would accept any calling AE "
                "title (API keys do not apply to DIMSE); set SHARPCXR_DICOM_ALLOWED_AES"
            )
        return self

    @model_validator(mode="after")
    def _default_in_resolutions(self) -> Settings:
        if (
            self.default_resolution is not None
            and self.resolutions
            and self.default_resolution not in self.resolutions
        ):
            raise ValueError(
                f"default_resolution {self.default_resolution} is not among "
                f"resolutions {self.resolutions}"
            )
        return self

    def jobs_database_url(self) -> str:
        """The job store's SQLAlchemy URL (the SQLite default under ``data_dir``)."""
        if self.jobs_url:
            return self.jobs_url
        return f"sqlite:///{(self.data_dir / 'jobs.sqlite').resolve()}"

    def api_key_bytes(self) -> list[bytes]:
        return [key.get_secret_value().encode() for key in self.api_keys]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment (tests override this)."""
    return Settings()
