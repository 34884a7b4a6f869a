"""`[targets.rio]`: where RIO is, who we are to it, and how patiently we wait for it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from ..base import TargetSettings
from .contract import DUO_OIN


class RioSettings(TargetSettings):
    """The keys of interface.md §1 `[targets.rio]`, plus the timing of the confirm phase."""

    beheren_url: str = "https://duo.nl/RIO/services/beheren4.0"
    raadplegen_url: str = "https://duo.nl/RIO/services/raadplegen4.0"
    recipient_oin: str = Field(default=DUO_OIN, pattern=r"^[0-9A-Z]{20}$",
                               description="ontvangendeInstantie and the ?oin= of wsa:To (DUO)")
    cert_file: Path | None = Field(default=None, description="PKIoverheid client certificate (PEM): TLS and signing")
    key_file: Path | None = Field(default=None, description="its private key (PEM, RSA, unencrypted)")
    ca_file: Path | None = Field(default=None, description="trust anchor for DUO's server; default: system store")
    sign: bool = Field(default=True, description="WS-Security signature (DUO requires it)")

    #: wsa:To is a logical address, not the endpoint: the SURF mapper sends
    #: "https://duo.nl/RIO/services/beheren4.0?oin=<DUO>" also to DUO's test environment
    #: (vt-webservice.duo.nl:6977), and DUO accepts it (recorded exchanges).
    address_base: str = "https://duo.nl/RIO/services"

    confirm_timeout: float = Field(
        default=600.0, ge=0,
        description="seconds to wait, per run, until RIO shows a write; then the item waits for the next run")
    poll_intervals: list[float] = Field(
        default=[0.5, 1.0, 2.0, 5.0, 15.0, 30.0, 60.0], min_length=1,
        description="pauses between visibility checks; the last one repeats")
    timeout: float = Field(default=60.0, gt=0, description="HTTP timeout per call, seconds")
    call_attempts: int = Field(default=4, ge=1, description="tries per call on SOAP faults and transport errors")
    max_attempts: int = Field(
        default=8, ge=1,
        description="writes of one microcredential that RIO rejects with a non-permanent code, before it is parked")
    concurrency: int = Field(default=8, ge=1, le=32, description="microcredentials handled at the same time")

    @field_validator("poll_intervals")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(x <= 0 for x in v):
            raise ValueError("every poll interval must be > 0 seconds")
        return v

    @model_validator(mode="after")
    def _signing_needs_a_key(self) -> RioSettings:
        if self.sign and (self.cert_file is None or self.key_file is None):
            raise ValueError("sign = true needs cert_file and key_file (DUO requires a WS-Security signature)")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give cert_file and key_file together")
        return self

    def to_address(self, service_path: str) -> str:
        """The wsa:To of a message to `beheren4.0` or `raadplegen4.0`."""
        return f"{self.address_base.rstrip('/')}/{service_path}?oin={self.recipient_oin}"
