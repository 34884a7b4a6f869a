"""All of issue 7's figures in one command, with the machine they ran on.

    .venv/bin/python bench/run_all.py [--quick] [--records 100000] [--memory-rows 1000000]
        [--naive-records 2000] [--latency 0.02] [--microcredentials 10] [--json-out FILE]

Runs, in order, each in its own process (so that one's memory or warm caches do not affect another):

1. `mcsync --help`: median wall time of 5 fresh processes (after one untimed warm-up), both as
   `python -m mcsync --help` and as the venv's `mcsync` console script if it is installed;
2. bench/bench_sync.py at `--records`: full sync through all three targets, the re-sync with unchanged
   files and the re-sync reading every row (`--full`);
3. bench/bench_memory.py at `--memory-rows`: peak RSS of `mcsync validate` and of the engine's read,
   map and plan phase;
4. bench/bench_naive.py at `--naive-records`: mcsync (Edubadges only) against the naive script, one
   request per award; it is also given bench_sync's measured full-sync rate for the ratio at that size.

Prints one JSON object (every benchmark's own JSON under its name), then a Markdown table of the
issue's targets: target | measured | met?. `--quick` scales down for a check that the harness works
(10,000 records, 100,000 memory rows, 500 naive records); its "met?" answers are marked as measured
at a smaller size than the issue's. Exit 0 when every benchmark ran, 1 when one failed (a target
not being met is a figure, not a failure).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

ISSUE = {"records": 100_000, "memory_rows": 1_000_000, "naive_records": 2_000}
QUICK = {"records": 10_000, "memory_rows": 100_000, "naive_records": 500}
TARGETS = {"full_sync_rate": 2_000, "resync_full_s": 5.0, "resync_unchanged_s": 1.0, "memory_mb": 200,
           "help_s": 0.5}


def log(message: str) -> None:
    print(f"[run_all {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, object]:
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass

    def git(*argv: str) -> str | None:
        try:
            return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"cpus": os.cpu_count(), "memory": memory, "processor": platform.processor() or platform.machine(),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "platform": platform.platform(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "commit": git("rev-parse", "--short", "HEAD"),
            "working_tree": None if status is None else ("modified" if status else "clean")}


def time_help(runs: int = 5) -> dict[str, object]:
    commands = {"python -m mcsync --help": [sys.executable, "-m", "mcsync", "--help"]}
    script = Path(sys.executable).parent / "mcsync"
    if script.exists():
        commands["mcsync --help"] = [str(script), "--help"]
    result: dict[str, object] = {}
    for label, argv in commands.items():
        subprocess.run(argv, cwd=ROOT, capture_output=True, check=False)      # warm-up: page cache, .pyc files
        times, codes = [], set()
        for _ in range(runs):
            started = time.perf_counter()
            done = subprocess.run(argv, cwd=ROOT, capture_output=True, check=False)
            times.append(time.perf_counter() - started)
            codes.add(done.returncode)
        result[label] = {"median_s": round(statistics.median(times), 3), "runs_s": [round(t, 3) for t in times],
                         "exit_codes": sorted(codes)}
    if not script.exists():
        result["note"] = f"no console script at {script}"
    return result


def run_bench(name: str, argv: list[str]) -> dict[str, object]:
    """Run one benchmark script in its own process; its JSON (stdout), or what went wrong."""
    command = [sys.executable, str(BENCH / name), *argv]
    log(f"{name} {' '.join(argv)}")
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+", encoding="utf-8") as errors:
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, text=True, check=False)
        errors.seek(0)
        stderr = errors.read()
    seconds = round(time.perf_counter() - started, 1)
    log(f"{name} finished in {seconds} s (exit {done.returncode})")
    out = done.stdout
    data: object = None
    try:
        data = json.loads(out)
    except ValueError:         # something else printed to stdout too: take the last top-level JSON object
        for start in (i for i, line in enumerate(out.splitlines()) if line.startswith("{")):
            try:
                data = json.loads("\n".join(out.splitlines()[start:]))
            except ValueError:
                continue
    result: dict[str, object] = {"command": " ".join(["python", f"bench/{name}", *argv]), "exit_code": done.returncode,
                                 "wall_seconds": seconds}
    if isinstance(data, dict):
        result["result"] = data
    else:
        result["error"] = "no JSON object on stdout"
        result["stdout_tail"] = out[-2000:]
    if done.returncode != 0 or not isinstance(data, dict):
        result["stderr_tail"] = stderr[-3000:]
    return result


def get(data: object, *path: str) -> object:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def verdict(ok: bool | None, scaled: str | None) -> str:
    if ok is None:
        return "not measured"
    answer = "yes" if ok else "**no**"
    return f"{answer} (at {scaled}; the target is at the issue's size)" if scaled else answer


def targets_table(opts: argparse.Namespace, help_: dict, sync: dict, memory: dict, naive: dict) -> list[dict]:
    rows: list[dict[str, object]] = []
    n, lat_ms = opts.records, f"{opts.latency * 1000:g} ms"
    scaled_sync = None if n == ISSUE["records"] else f"{n:,} records"
    s = get(sync, "result")
    full_rate = get(s, "full_sync", "records_per_second")
    full_ok = None
    if full_rate is not None:
        full_ok = (full_rate >= TARGETS["full_sync_rate"] and get(s, "full_sync", "exit_code") == 0
                   and not any(get(s, "full_sync", "not_delivered").values()))
    rows.append({"target": f"full sync of 100,000 records, 10 microcredentials, three targets, {lat_ms} latency: "
                           f"≥ {TARGETS['full_sync_rate']:,} records/s",
                 "measured": (f"{full_rate:,.0f} records/s ({get(s, 'full_sync', 'seconds')} s for {n:,}; delivered: "
                              + ", ".join(f"{t} {c:,}" for t, c in (get(s, "full_sync", "delivered") or {}).items())
                              + ")") if full_rate is not None else "—",
                 "met": full_ok, "scaled": scaled_sync})
    for key, label, limit in (
            ("no_change_resync_reading_every_row", ("re-sync without changes, every row re-read (`sync --full`): "
             f"0 write requests, < {TARGETS['resync_full_s']:g} s"), TARGETS["resync_full_s"]),
            ("no_change_resync", (f"re-sync when no export file changed: 0 write requests, "
             f"< {TARGETS['resync_unchanged_s']:g} s"), TARGETS["resync_unchanged_s"])):
        seconds, writes = get(s, key, "seconds"), get(s, key, "write_requests")
        ok = None if seconds is None else (seconds < limit and writes == 0)
        rows.append({"target": label, "measured": "—" if seconds is None else f"{seconds} s, {writes} write requests",
                     "met": ok, "scaled": scaled_sync})
    m = get(memory, "result")
    rows_n = opts.memory_rows
    v_mb, e_mb = get(m, "validate", "peak_rss_mb"), get(m, "engine_read_map_plan", "peak_rss_mb")
    mem_ok = None
    if v_mb is not None and e_mb is not None:
        mem_ok = (max(v_mb, e_mb) < TARGETS["memory_mb"] and get(m, "validate", "exit_code") == 0
                  and get(m, "engine_read_map_plan", "exit_code") == 0)
    rows.append({"target": f"1,000,000-row export read and mapped: peak memory < {TARGETS['memory_mb']} MB",
                 "measured": "—" if mem_ok is None else
                 (f"peak RSS {v_mb} MB `mcsync validate` ({get(m, 'validate', 'seconds')} s), {e_mb} MB engine "
                  f"read+map+plan ({get(m, 'engine_read_map_plan', 'seconds')} s, "
                  f"{get(m, 'engine_read_map_plan', 'rows_per_second'):,.0f} rows/s), at {rows_n:,} rows"),
                 "met": mem_ok, "scaled": None if rows_n == ISSUE["memory_rows"] else f"{rows_n:,} rows"})
    medians = {label: get(help_, label, "median_s") for label in help_ if isinstance(help_[label], dict)}
    help_ok = bool(medians) and all(t is not None and t < TARGETS["help_s"] for t in medians.values()) and all(
        get(help_, label, "exit_codes") == [0] for label in medians)
    rows.append({"target": f"`mcsync --help` < {TARGETS['help_s']:g} s",
                 "measured": "; ".join(f"`{label}` {t} s" for label, t in medians.items()) + " (median of 5)",
                 "met": help_ok if medians else None, "scaled": None})
    nv = get(naive, "result")
    if nv:
        k = get(nv, "records")
        text = (f"Edubadges only, {k:,} records: mcsync {get(nv, 'mcsync_edubadges_only', 'records_per_second'):,} "
                f"records/s vs naive {get(nv, 'naive', 'records_per_second'):,} records/s = "
                f"**{get(nv, 'ratio')}×** ({get(nv, 'ratio_vs_ideal_naive')}× against a naive script paying only the "
                f"latency); naive extrapolated to {get(nv, 'naive_extrapolated', 'records'):,} records: "
                f"{get(nv, 'naive_extrapolated', 'minutes')} min (extrapolated, not measured)")
        full = get(nv, "ratio_full_sync_vs_naive_extrapolated")
        if full:
            text += (f"; full three-target sync measured at {n:,} records vs naive extrapolated: "
                     f"**{full['ratio']}×** ({full['ratio_vs_ideal_naive']}× against the latency-only naive script)")
        probe, latency_ms = get(nv, "sandbox_round_trip_ms"), opts.latency * 1000
        if isinstance(probe, (int, float)) and probe > latency_ms + 5:
            text += (f". Caution: one request to the sandbox took {probe} ms with {latency_ms:g} ms latency "
                     f"configured (see sandbox_round_trip_note)")
        rows.append({"target": "side by side with the naive script (one request per award, sequential): report "
                               "the ratio", "measured": text,
                     "met": "reported" if get(nv, "correct") else "**no**: the runs did not deliver every record",
                     "scaled": None})
    else:
        rows.append({"target": "side by side with the naive script: report the ratio", "measured": "—",
                     "met": None, "scaled": None})
    return rows


def markdown(rows: list[dict], host: dict[str, object]) -> str:
    lines = ["| target | measured | met? |", "|---|---|---|"]
    for row in rows:
        met = row["met"] if isinstance(row["met"], str) else verdict(row["met"], row["scaled"])
        lines.append(f"| {row['target']} | {row['measured']} | {met} |")
    lines += ["", (f"Machine: {host['cpus']} CPUs ({host['processor']}), {host['memory']}, {host['platform']}, "
                  f"{host['python']}; {host['date']}; commit {host['commit']} ({host['working_tree']} working tree).")]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 records, 100,000 memory rows, 500 naive records "
                                                             "(explicit sizes still win)")
    parser.add_argument("--records", type=int, help=f"bench_sync size (default {ISSUE['records']:,})")
    parser.add_argument("--memory-rows", type=int, help=f"bench_memory size (default {ISSUE['memory_rows']:,})")
    parser.add_argument("--naive-records", type=int, help=f"bench_naive size (default {ISSUE['naive_records']:,})")
    parser.add_argument("--microcredentials", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per request, in the sandbox")
    parser.add_argument("--json-out", type=Path, help="also write the JSON summary to this file")
    opts = parser.parse_args()
    sizes = QUICK if opts.quick else ISSUE
    for key, value in sizes.items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)

    started = time.perf_counter()
    host = machine()
    log("mcsync --help, 5 fresh processes each way")
    help_ = time_help()
    common = ["--microcredentials", str(opts.microcredentials)]
    sync = run_bench("bench_sync.py", ["--records", str(opts.records), "--latency", str(opts.latency), *common])
    memory = run_bench("bench_memory.py", ["--rows", str(opts.memory_rows), *common])
    naive_argv = ["--records", str(opts.naive_records), "--latency", str(opts.latency),
                  "--extrapolate-to", str(ISSUE["records"]), *common]
    full_rate = get(sync, "result", "full_sync", "records_per_second")
    if full_rate:
        naive_argv += ["--mcsync-full-rate", str(full_rate), "--mcsync-full-records", str(opts.records)]
    naive = run_bench("bench_naive.py", naive_argv)

    rows = targets_table(opts, help_, sync, memory, naive)
    failed = [name for name, run in (("bench_sync", sync), ("bench_memory", memory), ("bench_naive", naive))
              if run["exit_code"] != 0 or "result" not in run]
    summary = {
        "machine": host,
        "options": {"quick": opts.quick, "records": opts.records, "memory_rows": opts.memory_rows,
                    "naive_records": opts.naive_records, "microcredentials": opts.microcredentials,
                    "latency_s": opts.latency},
        "seconds": round(time.perf_counter() - started, 1),
        "help": help_, "sync": sync, "memory": memory, "naive": naive,
        "targets": [{"target": r["target"], "measured": r["measured"],
                     "met": r["met"], "measured_at_smaller_size": r["scaled"]} for r in rows],
        "failed": failed,
    }
    text = json.dumps(summary, indent=2, ensure_ascii=False)
    if opts.json_out:
        opts.json_out.write_text(text + "\n", encoding="utf-8")
    print(text)
    print()
    print(markdown(rows, host))
    if failed:
        log(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
