"""Progress of a run, as the engine reports it: phases that start, advance and finish.

The engine calls a `Progress` at three kinds of moments:

    start(phase, total)   a phase begins: "read <source>" (total None: rows are counted as they come),
                          "deliver <target>" (total = the items due for that target)
    advance(phase, n)     n more rows read, or n more items settled (delivered, withdrawn, submitted,
                          deferred or parked)
    finish(phase)         the phase is over (also when it stopped early)

`NoProgress` ignores all of it (the default; the daemon and `sync` use it). How progress is shown
(rich bars on a terminal, plain periodic lines in a log) is the renderer's business, not the engine's.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, phase: str, total: int | None) -> None: ...

    def advance(self, phase: str, n: int = 1) -> None: ...

    def finish(self, phase: str) -> None: ...


class NoProgress:
    """Reports nothing."""

    def start(self, phase: str, total: int | None) -> None:
        pass

    def advance(self, phase: str, n: int = 1) -> None:
        pass

    def finish(self, phase: str) -> None:
        pass
