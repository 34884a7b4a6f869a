"""The RIO target: microcredentials as units and offerings in DUO's RIO (signed SOAP, V4)."""

from .settings import RioSettings
from .target import RioTarget

__all__ = ["RioSettings", "RioTarget"]
