"""Benchmark: peak memory of reading and mapping a large export (issue 7: 1,000,000 rows under 200 MB).

    .venv/bin/python bench/bench_memory.py [--rows 1000000] [--microcredentials 10] [--keep DIR]

Generates an Osiris-style export of `--rows` passed results, its learner directory and mapping with
`bench_sync.generate` (the same files the sync benchmark uses), then measures two separate child
processes, one after the other:

(a) `python -m mcsync --config X validate`: every row read through the CSV adapter and mapped through
    the mapping to a canonical record, exactly as a sync does, no target contacted;
(b) the engine's read, map and plan phase: a child that runs `Engine(config, store).run()` with no
    target enabled (a config variant without the `[targets.*]` tables) into a fresh state file, so
    the learner directory is loaded and every record is mapped, planned and stored; nothing is delivered.

Peak memory is the child's peak resident set size as the kernel reports it when the child ends:
`os.wait4(pid)` returns that child's own `ru_maxrss` (Linux: KiB; its high-water mark over the whole
life of the process, nothing sampled, nothing missed, and not mixed up with earlier children as
`getrusage(RUSAGE_CHILDREN)` would be). Child (b) also reads its own `VmHWM` from /proc/self/status
just before it exits, as a cross-check. A bare interpreter importing the engine is measured the same
way, as the fixed part of the figure.

MB below means 10^6 bytes (the issue's "200 MB"); MiB figures are given too.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_sync import generate

TARGET_MB = 200


def config_variant(folder: Path, *, enabled: tuple[str, ...] = (), state: str = "memory.db",
                   name: str = "mcsync-no-targets.toml") -> Path:
    """A copy of the generated mcsync.toml whose [targets.*] tables are replaced: only the `enabled`
    targets remain, as `enabled = true` with no other settings (bench_sync's `point_config` fills
    in the sandbox); the others are left out (not enabled). The state file becomes `state`."""
    kept: list[str] = []
    in_targets = False
    for line in (folder / "mcsync.toml").read_text(encoding="utf-8").splitlines():
        header = re.match(r"\s*\[\[?([^\]]+)\]", line)
        if header:
            in_targets = header.group(1).strip().startswith("targets.")
        if in_targets:
            continue
        if re.match(r'\s*path\s*=\s*"bench\.db"', line):
            line = f'path = "{state}"'
        kept.append(line)
    kept += [line for t in enabled for line in (f"[targets.{t}]", "enabled = true")]
    path = folder / name
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return path


def measured(argv: list[str], *, cwd: Path) -> dict[str, object]:
    """Run `argv` as a child process; its wall time, exit code, stdout and peak RSS (wait4's ru_maxrss)."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # read the pipes in the background so a chatty child cannot block on a full pipe before exiting
    out: dict[str, str] = {}

    def drain(name: str, stream) -> None:
        out[name] = stream.read()

    threads = [threading.Thread(target=drain, args=(n, s)) for n, s in (("stdout", process.stdout),
                                                                         ("stderr", process.stderr))]
    for thread in threads:
        thread.start()
    _, status, usage = os.wait4(process.pid, 0)   # this child's own rusage, reaped here
    seconds = time.perf_counter() - started
    for thread in threads:
        thread.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    kib = usage.ru_maxrss if sys.platform != "darwin" else usage.ru_maxrss // 1024
    return {"seconds": round(seconds, 2), "exit_code": process.returncode, "peak_rss_kib": kib,
            "peak_rss_mb": round(kib * 1024 / 1e6, 1), "peak_rss_mib": round(kib / 1024, 1),
            "stdout": out.get("stdout", ""), "stderr": out.get("stderr", "")}


def engine_child(config_path: str) -> int:
    """Child (b): read, map and plan into a fresh state file with no target enabled; JSON on stdout."""
    from mcsync.config import load_config
    from mcsync.engine import Engine
    from mcsync.state import SqliteStateStore

    config = load_config(Path(config_path))
    assert not config.enabled_targets(), config.enabled_targets()
    if config.state_path.exists():
        raise SystemExit(f"{config.state_path} exists: the engine child wants a fresh state file")
    store = SqliteStateStore(config.state_path)
    try:
        started = time.perf_counter()
        report = Engine(config, store).run()
        seconds = time.perf_counter() - started
        counts = {"records": store_count(store)}
    finally:
        store.close()
    print(json.dumps({"seconds": round(seconds, 2), "read": report.read, "mapped": report.mapped,
                      "changed": report.changed, "learners": report.learners, "problems": report.problems,
                      "exit_code": report.exit_code, "vm_hwm_kib": vm_hwm_kib(), **counts,
                      "state_file_mb": round(state_size(config.state_path) / 1e6, 1)}))
    return 0


def store_count(store) -> int | None:
    try:
        return store.conn.execute("SELECT count(*) FROM records").fetchone()[0]
    except sqlite3.Error:
        return None


def state_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


def vm_hwm_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--microcredentials", type=int, default=10)
    parser.add_argument("--keep", type=Path, help="generate into this (empty or new) folder and keep it")
    parser.add_argument("--engine-child", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_child:
        return engine_child(args.engine_child)

    with tempfile.TemporaryDirectory(prefix="mcsync-bench-memory-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        generate(folder, args.rows, args.microcredentials)
        generated = time.perf_counter() - started
        config = config_variant(folder)
        export_mb = round(sum((folder / f).stat().st_size for f in ("results.csv", "learners.csv")) / 1e6, 1)

        baseline = measured([sys.executable, "-c", "import mcsync.engine, mcsync.validate, mcsync.state"],
                            cwd=folder)
        validate = measured([sys.executable, "-m", "mcsync", "--config", str(config), "-q", "validate"], cwd=folder)
        engine = measured([sys.executable, str(Path(__file__).resolve()), "--engine-child", str(config)],
                          cwd=folder)

    def figures(run: dict[str, object], extra: dict[str, object], seconds: object = None) -> dict[str, object]:
        """`seconds`: the timed work (default: the whole process, start-up included)."""
        seconds = run["seconds"] if not isinstance(seconds, (int, float)) else seconds
        figure = {"seconds": seconds, "process_seconds": run["seconds"],
                  **{k: run[k] for k in ("exit_code", "peak_rss_mb", "peak_rss_mib")},
                  "rows_per_second": round(args.rows / seconds, 1) if seconds else None, **extra}
        if run["exit_code"] != 0:
            figure["stderr_tail"] = str(run["stderr"])[-2000:]
        return figure

    validate_lines = [line for line in str(validate["stdout"]).splitlines() if line.startswith(("source", "learners"))]
    try:
        child = json.loads(str(engine["stdout"]).strip().splitlines()[-1])
    except (IndexError, ValueError):
        child = {"unreadable_stdout": str(engine["stdout"])[-2000:]}
    hwm = child.get("vm_hwm_kib")
    child["vm_hwm_mb"] = round(hwm * 1024 / 1e6, 1) if isinstance(hwm, int) else None
    peak = max(float(validate["peak_rss_mb"]), float(engine["peak_rss_mb"]))
    result = {
        "rows": args.rows, "microcredentials": args.microcredentials,
        "export_mb": export_mb, "generate_seconds": round(generated, 2),
        "method": "peak RSS = ru_maxrss of each child from os.wait4(pid) (kernel high-water mark over the "
                  "child's whole life); MB = 10^6 bytes",
        "import_baseline": {k: baseline[k] for k in ("seconds", "exit_code", "peak_rss_mb", "peak_rss_mib")},
        "validate": figures(validate, {"command": "python -m mcsync --config X -q validate (seconds: the "
                                                  "whole process)", "output": validate_lines}),
        "engine_read_map_plan": figures(engine, {"what": "Engine(config, store).run(), no target enabled, fresh "
                                                         "state file (seconds: the run() call)", "child": child},
                                        seconds=child.get("seconds")),
        "peak_rss_mb": peak,
        "target_mb": TARGET_MB,
        "met": peak < TARGET_MB and validate["exit_code"] == 0 and engine["exit_code"] == 0,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0 if validate["exit_code"] == 0 and engine["exit_code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
