"""The DUO-style register of awarded microcredentials (duo-register.md): the `duo` target."""

from __future__ import annotations

from .settings import DuoSettings
from .target import DuoRegisterTarget

__all__ = ["DuoRegisterTarget", "DuoSettings"]
