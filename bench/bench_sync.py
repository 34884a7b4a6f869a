"""Benchmark: a full sync of N passed records through all three targets, then a no-change re-sync.

    .venv/bin/python bench/bench_sync.py [--records 100000] [--microcredentials 10] [--latency 0.02]

Generates an Osiris-style CSV export (N passed results spread over the microcredentials), a
learner directory (student number + date of birth, for the register) and a mapping, starts the
sandbox on 127.0.0.1 with `--latency` seconds added to every request, and times:

1. the full sync (read, map, plan, deliver to RIO, Edubadges and the DUO register, including
   waiting for RIO's visibility and the register's processing reports);
2. a second sync with the same exports: it must make zero write requests (the exports' files are
   unchanged, so they are not even read);
3. a third one with `full=True` (`sync --full`): every row read and compared, still zero writes.

Prints one JSON object with the figures and the machine they ran on; `bench/README.md` keeps them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from mcsync.config import load_config
from mcsync.engine import Engine
from mcsync.sandbox import point_config
from mcsync.state import SqliteStateStore

FIRST_NAMES = ["Sanne", "Mohammed", "Femke", "Zoë", "Søren", "Anaïs", "Daan", "Lotte", "Noah", "Eva"]
PREFIXES = ["", "", "", "de", "van", "van der", "el"]
LAST_NAMES = ["Vries", "Amrani", "Bakker", "Berg", "Jørgensen", "Dijk", "Jansen", "Visser", "Smit", "Meijer"]


def generate(folder: Path, records: int, microcredentials: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    codes = [f"MC-BENCH{i:02d}" for i in range(microcredentials)]
    mapping = ["[grading]", "pass_threshold = 5.5", ""]
    for i, code in enumerate(codes):
        mapping += [
            "[[microcredentials]]", f'code = "{code}"',
            f'title = {{ nl = "Benchmarkmodule {i}", en = "Benchmark module {i}" }}',
            f'learning_outcomes = [{{ nl = "Beheerst onderdeel {i}." }}]',
            f"ects = {3 + i % 28}", "eqf = 6", 'nlqf = "6"', 'assessment_type = "written_exam"',
            'participation = "online"', 'quality_assurance = { name = "Kwaliteitskader Microcredentials" }',
            "start_date = 2025-02-03", f'edubadges = {{ badgeclass = "BenchBadgeClass{i:02d}xxxxxx" }}',
            'rio = { kind = "hoOnderwijseenheid" }', ""]
    (folder / "mapping.toml").write_text("\n".join(mapping), encoding="utf-8")
    with open(folder / "results.csv", "w", encoding="utf-8") as results, \
            open(folder / "learners.csv", "w", encoding="utf-8") as learners:
        results.write("studentnummer;cursuscode;resultaat;datum_behaald;voornaam;tussenvoegsel;achternaam;email\n")
        learners.write("student_number,bsn,onderwijsnummer,date_of_birth,given_name,family_name_prefix,"
                       "family_name,email,eppn\n")
        for n in range(records):
            number = str(3000000 + n)
            given, prefix, last = rng.choice(FIRST_NAMES), rng.choice(PREFIXES), rng.choice(LAST_NAMES)
            grade = f"{rng.randint(55, 100) / 10:.1f}".replace(".", ",")
            email = f"s{number}@student.bench.nl"
            results.write(f"{number};{codes[n % len(codes)]};{grade};2025-06-{1 + n % 28:02d};"
                          f"{given};{prefix};{last};{email}\n")
            learners.write(f"{number},,,{1980 + n % 25}-{1 + n % 12:02d}-{1 + n % 28:02d},{given},{prefix},"
                           f"{last},{email},\n")
    (folder / "mcsync.toml").write_text("""
[institution]
name = "Benchmark Hogeschool"
brin = "99ZZ"
oin = "0000000700099ZZ00000"
onderwijsaanbiedercode = "110A133"
eppn_template = "{student_number}@student.bench.nl"

[state]
path = "bench.db"

[[learners]]
adapter = "learners-csv"
path = "learners.csv"

[[sources]]
name = "osiris"
adapter = "csv"
mapping = "mapping.toml"
[sources.options]
path = "results.csv"
delimiter = ";"
[sources.options.columns]
student_number = "studentnummer"
course_code = "cursuscode"
grade = "resultaat"
date = "datum_behaald"
given_name = "voornaam"
family_name_prefix = "tussenvoegsel"
family_name = "achternaam"
email = "email"

[targets.rio]
enabled = true
[targets.edubadges]
enabled = true
[targets.duo]
enabled = true
""", encoding="utf-8")


class SandboxProcess:
    """`mcsync sandbox` in its own process (as in production the national systems are elsewhere):
    so the figures measure mcsync, not a simulator sharing its interpreter."""

    def __init__(self, config_path: Path, latency: float) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mcsync", "--config", str(config_path), "-q", "sandbox", "--port", str(port),
             "--latency", str(latency)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/_sandbox/stats", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the sandbox did not start")

    def stats(self) -> dict:
        return httpx.get(self.url + "/_sandbox/stats", timeout=10).json()

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def timed_run(config, sandbox: SandboxProcess, **options) -> dict[str, object]:
    store = SqliteStateStore(config.state_path)
    try:
        writes_before = sandbox.stats()["write_requests"]
        started = time.perf_counter()
        report = Engine(config, store).run(**options)
        seconds = time.perf_counter() - started
        counts = store.counts()
    finally:
        store.close()
    return {"seconds": round(seconds, 2), "read": report.read, "mapped": report.mapped, "changed": report.changed,
            "skipped": report.skipped,
            "target_seconds": {name: t.seconds for name, t in report.targets.items()},
            "write_requests": sandbox.stats()["write_requests"] - writes_before, "exit_code": report.exit_code,
            "delivered": {name: c.get("delivered", 0) for name, c in counts.items()},
            "not_delivered": {name: sum(v for k, v in c.items() if k != "delivered") for name, c in counts.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--microcredentials", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per request, in the sandbox")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mcsync-bench-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        generate(folder, args.records, args.microcredentials)
        generated = time.perf_counter() - started
        config = load_config(folder / "mcsync.toml")
        sandbox = SandboxProcess(folder / "mcsync.toml", args.latency)
        try:
            config = point_config(config, sandbox.url, state_path=folder / "bench.db", signing_dir=folder / "pki")
            full = timed_run(config, sandbox)
            again = timed_run(config, sandbox)
            full_read = timed_run(config, sandbox, full=True)
            held = sandbox.stats()["summary"]
        finally:
            sandbox.close()
    result = {
        "records": args.records, "microcredentials": args.microcredentials, "latency_s": args.latency,
        "generate_seconds": round(generated, 2),
        "full_sync": {**full, "records_per_second": round(args.records / full["seconds"], 1)},
        "no_change_resync": again,
        "no_change_resync_reading_every_row": full_read,
        "sandbox_holds": held,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
