"""Test helpers for adapter authors (needs pytest): `AdapterConformance`, the reusable suite, and
`read_adapter`, which reads an adapter the way the engine does (with the network blocked).

    from mcsync.testing import AdapterConformance

    class TestMyAdapter(AdapterConformance):
        adapter = MyAdapter
        options = {"course_code": "MC-DATA01"}
        sample = Path(__file__).parent / "sample.csv"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..adapter import AdapterContext, LearnerRow, RawResult
from ..errors import InputProblem
from .conformance import AdapterConformance, NetworkBlocked, block_network


def read_adapter(adapter: type[Any], options: dict[str, Any], *, base_dir: Path,
                 source: str = "test") -> list[RawResult | LearnerRow | InputProblem]:
    """Everything `adapter` yields for `options` (validated by its Options), sockets blocked."""
    instance = adapter(adapter.Options.model_validate(options), AdapterContext(source=source, base_dir=base_dir))
    with block_network() as attempts:
        items = list(instance.read())
    assert not attempts, f"{adapter.__name__} tried to reach the network: {attempts}"
    return items


__all__ = ["AdapterConformance", "NetworkBlocked", "block_network", "read_adapter"]
