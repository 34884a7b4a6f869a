"""`[targets.edubadges]`: where Edubadges and its token endpoint live, and how to send to them."""

from __future__ import annotations

import re

from pydantic import Field, FilePath, SecretStr, field_validator

from ...errors import ConfigError
from ...http import check_url
from ..base import TargetSettings

#: What an eppn looks like when the institution's own pattern is not configured (the simulator's default too).
DEFAULT_EPPN_PATTERN = r"^[^@\s]+@[^@\s]+$"


class EdubadgesSettings(TargetSettings):
    """Settings of the Edubadges target. The client secret is never printed or logged."""

    api_url: str = Field(default="https://api.edubadges.nl",
                         description="Edubadges API base (test: https://api-test.edubadges.nl); no trailing slash")
    token_url: str = Field(default="https://connect.surfconext.nl/oidc/token",
                           description="SURFconext OIDC-NG token endpoint (client credentials)")
    client_id: str = Field(min_length=1, description="the SIS client id SURF linked to the institution")
    client_secret: SecretStr
    scope: str = "edubadges.nl/sis"
    notify_recipients: bool = Field(default=True, description="Edubadges mails each learner about the new award")
    timeout: float = Field(default=60.0, gt=0, description="seconds per HTTP request")
    max_bundle_size: int = Field(default=500, ge=1, le=5000, description="awards per bundle (one badge class)")
    concurrency: int = Field(default=4, ge=1, le=32, description="bundles sent in parallel")
    ca_file: FilePath | None = Field(default=None,
                                     description="trust anchor for api_url and token_url; default: system store")
    eppn_pattern: str = Field(default=DEFAULT_EPPN_PATTERN,
                              description="the institution's eppn pattern (Edubadges checks it, case-insensitive)")
    revocation_reason: str = Field(default="Withdrawn by the institution: the result changed in its records",
                                   min_length=1, max_length=255,
                                   description="reason sent (and mailed to the learner) when an award is withdrawn")
    max_attempts: int = Field(default=5, ge=1, le=20, description="tries per call on temporary failures")

    @field_validator("api_url", "token_url")
    @classmethod
    def _https(cls, value: str) -> str:
        try:
            return check_url(value, key="url")
        except ConfigError as exc:
            raise ValueError(f"{exc.message}; {exc.hint}") from None

    @field_validator("eppn_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"is not a regular expression: {exc}") from None
        return value
