"""Settings: every knob of the server in one place, read from ``ROICONV_*`` environment variables.

``Settings.model_fields`` is the single source of truth for the environment names (the deploy files are checked
against it). :func:`load_settings` turns a validation error into one clear :class:`SettingsError` message that names
each bad variable, so an invalid setting stops start-up before anything is served.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "SettingsError", "load_settings", "parse_devices"]

_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")


class SettingsError(ValueError):
    """Invalid settings; the message names every bad ``ROICONV_*`` variable and why."""


class Settings(BaseSettings):
    """Server settings. Environment variables are the field names upper-cased with the ``ROICONV_`` prefix."""

    model_config = SettingsConfigDict(env_prefix="ROICONV_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Address `roiconv serve` listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port `roiconv serve` listens on.")
    log_level: str = Field("info", pattern=r"^(critical|error|warning|info|debug)$", description="Log level.")
    devices: str = Field(
        "auto", description='"auto" (every CUDA GPU, else the CPU), "cpu", or a list such as "cuda:0,cuda:1".'
    )
    workers_per_device: int = Field(1, ge=1, le=64, description="Workers pulling batches on each device.")
    max_batch: int = Field(16, ge=1, le=1024, description="Most requests in one batch (1 disables batching).")
    max_batch_delay_ms: float = Field(2.0, ge=0, le=10_000, description="Longest wait for a batch to fill, in ms.")
    max_queue: int = Field(
        64, ge=1, description="Requests waiting for a worker (being decoded or queued) before new ones get 429."
    )
    detect_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Threads finding faces (/detect, and /convolve with `roi.detect`) apart from the threads of the "
        "other requests, so that detections never hold small requests up (unset: half the cores, at least 1).",
    )
    detect_queue: int = Field(16, ge=1, description="Detections waiting for a detect thread before new ones get 429.")
    request_timeout_s: float = Field(30.0, gt=0, description="Deadline of a request (caps `timeout_ms`); then 504.")
    max_body_bytes: int = Field(32 * 2**20, ge=1024, description="Largest request body; larger gets 413.")
    max_pixels: int = Field(40_000_000, ge=1, description="Largest image (width × height); larger gets 413.")
    drain_timeout_s: float = Field(30.0, ge=0, description="On SIGTERM, how long in-flight requests may take.")
    body_timeout_s: float = Field(
        10.0, gt=0, description="Longest time to receive a request body (within the request deadline); then 408."
    )
    max_uploads: int = Field(128, ge=1, description="Request bodies being received at once; more get 429.")
    max_spec_bytes: int = Field(2**20, ge=1024, description="Largest `spec` part (field or file); larger gets 413.")
    max_inflight_bytes: int | None = Field(
        None,
        ge=2**20,
        description="Memory budget for admitted requests' estimated peaks (unset: half the container's or machine's "
        "memory); the excess waits, a request that can never fit gets 413.",
    )
    keepalive_timeout_s: int = Field(5, ge=1, le=300, description="Idle keep-alive connections are closed after this.")
    api_key: SecretStr | None = Field(
        None,
        description="When set, /convolve, /info and /metrics need this value in `X-API-Key` (or as "
        "`Authorization: Bearer`, which Prometheus can send).",
    )
    allowed_hosts: str = Field(
        "",
        description="Comma-separated Host header names served (e.g. `localhost,127.0.0.1` for a server on "
        "loopback: refuses DNS rebinding); empty: any.",
    )
    models_dir: Path | None = Field(
        None,
        description="Folder of models served as `model:<name>`: torch.export programs (`*.pt2`, optional `*.json` "
        "sidecar) and TorchScript (`*.pt`, dense).",
    )

    @field_validator("devices")
    @classmethod
    def _check_devices(cls, value: str) -> str:
        parse_devices(value, available=None)
        return value.strip()

    @field_validator("models_dir")
    @classmethod
    def _check_models_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"must be an existing folder, got {str(value)!r}")
        return value

    @field_validator("api_key")
    @classmethod
    def _check_api_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None
        return value

    def public(self) -> dict:
        """The effective settings without secrets (for /info)."""
        data = self.model_dump(mode="json", exclude={"api_key"})
        data["api_key_set"] = self.api_key is not None
        return data


def parse_devices(value: str, available: int | None) -> list[str]:
    """Resolve a DEVICES value into device names; ``available`` is the CUDA device count (None: do not check)."""
    text = value.strip().lower()
    if text == "auto":
        if available is None:
            return ["auto"]
        return [f"cuda:{i}" for i in range(available)] or ["cpu"]
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError('must be "auto", "cpu" or a comma-separated list such as "cuda:0,cuda:1"')
    out = []
    for name in names:
        if not _DEVICE_RE.match(name):
            raise ValueError(f'unknown device {name!r}; use "auto", "cpu", "cuda" or "cuda:N"')
        if name == "cuda":
            name = "cuda:0"
        if available is not None and name.startswith("cuda") and int(name.split(":")[1]) >= available:
            raise ValueError(f"{name} is not available ({available} CUDA device(s) found)")
        if name in out:
            raise ValueError(f"device {name!r} is listed twice")
        out.append(name)
    return out


def load_settings(**overrides) -> Settings:
    """Read the settings (environment plus ``overrides``), raising :class:`SettingsError` with a readable message."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            reason = err["msg"].removeprefix("Value error, ")
            got = "" if field == "api_key" else f" (got {err.get('input')!r})"
            lines.append(f"ROICONV_{field.upper()}: {reason}{got}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
