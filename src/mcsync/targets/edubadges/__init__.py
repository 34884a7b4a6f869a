"""The Edubadges target (SURF): direct awards for passed results. See target.py for the algorithm."""

from __future__ import annotations

from .settings import EdubadgesSettings
from .target import EdubadgesTarget

__all__ = ["EdubadgesSettings", "EdubadgesTarget"]
