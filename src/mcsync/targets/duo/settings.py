"""`[targets.duo]`: where the register is, the client certificate, and the delivery limits.

The limits follow the register's contract (duo-register.md): at most 1000 records per delivery and
requests up to 10 MiB. `max_body_bytes` stays below that limit, so a 413 means the register's limit
is smaller than documented; mcsync then splits the delivery.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from ...errors import ConfigError
from ...http import check_url
from ..base import TargetSettings

#: The register's hard limits (duo-register.md, "Transport and security").
REGISTER_MAX_RECORDS = 1000
REGISTER_MAX_BYTES = 10 * 1024 * 1024


class DuoSettings(TargetSettings):
    """Settings of the DUO register target (interface.md §1, `[targets.duo]`)."""

    api_url: str | None = Field(
        default=None, description="base URL of the register, e.g. https://register.duo.example/rmc/v1")
    cert_file: Path | None = Field(default=None, description="TLS client certificate (PEM) carrying the OIN")
    key_file: Path | None = Field(default=None, description="private key of the client certificate")
    ca_file: Path | None = Field(default=None, description="trust anchor for the register; default: system store")
    timeout: float = Field(default=60.0, gt=0, description="seconds per HTTP request")
    batch_size: int = Field(default=REGISTER_MAX_RECORDS, ge=1, le=REGISTER_MAX_RECORDS,
                            description="records per delivery (the register takes at most 1000)")
    max_body_bytes: int = Field(default=9 * 1024 * 1024, ge=64 * 1024, lt=REGISTER_MAX_BYTES,
                                description="largest delivery body in bytes (the register takes up to 10 MiB)")
    concurrency: int = Field(default=2, ge=1, le=8,
                             description="deliveries on their way at the same time (the next body is built "
                                         "while the register reads the previous one)")
    poll_interval: float = Field(default=5.0, gt=0,
                                 description="seconds between report polls when the register names no Retry-After")
    poll_budget: float = Field(default=120.0, ge=0,
                               description="seconds one run waits for processing reports; the rest is read "
                                           "back on the next run")
    retry_attempts: int = Field(default=5, ge=1, le=20,
                                description="attempts per HTTP call on 429/503, 5xx and connection trouble")
    retry_initial: float = Field(default=1.0, gt=0, description="first back-off in seconds (then doubled, jittered)")
    retry_max: float = Field(default=60.0, gt=0, description="longest back-off in seconds")
    r900_retry_after: float = Field(default=60.0, ge=0,
                                    description="seconds before a record with R900 (temporary failure) goes again")
    r900_max_attempts: int = Field(default=10, ge=1,
                                   description="deliveries of one record ending in R900 before it is parked")

    @field_validator("api_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            return check_url(value, key="targets.duo.api_url")
        except ConfigError as exc:  # pydantic reports ValueErrors with the key and the file
            raise ValueError(str(exc)) from exc

    @model_validator(mode="after")
    def _complete(self) -> DuoSettings:
        if self.enabled and not self.api_url:
            raise ValueError("api_url is required when the duo target is enabled "
                             "(e.g. https://register.duo.example/rmc/v1, or the sandbox's URL)")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file is set without cert_file")
        return self
