"""Benchmark: how long the CSV adapters take per row, reading alone (no mapping, no targets).

    .venv/bin/python bench/bench_adapters.py [--rows 100000] [--repeat 3]

Generates the same two files as `bench_sync.py` (an Osiris-style results CSV read by the `csv`
adapter through a column map with `;` delimiter, and a learners CSV read by `learners-csv`),
builds each adapter the way the engine does (`plugins.load`, `plugin_settings`, `AdapterContext`)
and runs its `read()` to the end. Prints one JSON object with µs per row for each adapter (the best
of `--repeat` runs, wall clock and CPU time) and the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from mcsync import plugins
from mcsync.adapter import AdapterContext
from mcsync.config import load_config, plugin_settings
from mcsync.errors import InputProblem

sys.path.insert(0, str(Path(__file__).parent))
from bench_sync import generate  # noqa: E402  (the same two files the sync benchmark reads)


def build_adapter(config, name: str, options: dict, source: str):
    """The adapter as the engine's `_adapter()` builds it."""
    cls = plugins.load(plugins.ADAPTER_GROUP, name)
    opts = plugin_settings(cls.Options, options, config=config, key=f"sources.{source}.options")
    return cls(opts, AdapterContext(source=source, base_dir=config.base_dir))


def time_read(config, name: str, options: dict, source: str, rows: int, repeat: int) -> dict[str, object]:
    """Best wall-clock and CPU time of `repeat` full reads (CPU time is the steadier figure on a
    machine that is busy with other work)."""
    best = best_cpu = float("inf")
    items = problems = 0
    for _ in range(repeat):
        adapter = build_adapter(config, name, options, source)
        items = problems = 0
        started, started_cpu = time.perf_counter(), time.process_time()
        for item in adapter.read():
            if isinstance(item, InputProblem):
                problems += 1
            else:
                items += 1
        best_cpu = min(best_cpu, time.process_time() - started_cpu)
        best = min(best, time.perf_counter() - started)
    return {"us_per_row": round(best / rows * 1e6, 2), "cpu_us_per_row": round(best_cpu / rows * 1e6, 2),
            "seconds": round(best, 3), "items": items, "problems": problems}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per adapter; the best one counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mcsync-bench-adapters-") as tmp:
        folder = Path(tmp)
        generate(folder, args.rows, microcredentials=10)
        config = load_config(folder / "mcsync.toml")
        source = config.settings.sources[0]
        learners = config.settings.learners[0]
        figures = {
            "csv": time_read(config, source.adapter, source.options, source.name, args.rows, args.repeat),
            "learners-csv": time_read(config, learners.adapter, learners.all_options(), learners.name,
                                      args.rows, args.repeat),
        }
    print(json.dumps({
        "rows": args.rows, "repeat": args.repeat, "adapters": figures,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
