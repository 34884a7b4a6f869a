"""Benchmark: a full sync of N passed records through all three targets, then a no-change re-sync.

    .venv/bin/python bench/bench_sync.py [--records 100000] [--microcredentials 10] [--latency 0.02]

Generates an Osiris-style CSV export (N passed results spread over the microcredentials), a
learner directory (student number + date of birth, for the register) and a mapping, starts the
sandbox on 127.0.0.1 with `--latency` seconds added to every request, and times:

1. the full sync (read, map, plan, deliver to RIO, Edubadges and the DUO register, including
   waiting for RIO's visibility and the register's processing reports);
2. a second sync with the same exports: it must make zero write requests.

Prints one JSON object with the figures and the machine they ran on; `bench/README.md` keeps them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

from mcsync.config import load_config
from mcsync.engine import Engine
from mcsync.sandbox import Sandbox
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
    (folder / "mcsync.toml").write_text(f"""
[institution]
name = "Benchmark Hogeschool"
brin = "99ZZ"
oin = "0000000700099ZZ00000"
onderwijsaanbiedercode = "110A133"
eppn_template = "{{student_number}}@student.bench.nl"

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


def timed_run(config, sandbox: Sandbox) -> dict[str, float | int]:
    store = SqliteStateStore(config.state_path)
    try:
        writes_before = sandbox.write_requests()
        started = time.perf_counter()
        report = Engine(config, store).run()
        seconds = time.perf_counter() - started
        counts = store.counts()
    finally:
        store.close()
    return {"seconds": round(seconds, 2), "mapped": report.mapped, "changed": report.changed,
            "write_requests": sandbox.write_requests() - writes_before, "exit_code": report.exit_code,
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
        sandbox = Sandbox.from_config(config, latency=args.latency, rio_visibility_delay=0.1,
                                      duo_processing_delay=0.2).start()
        try:
            config = sandbox.point_config_here(config, state_path=folder / "bench.db")
            full = timed_run(config, sandbox)
            again = timed_run(config, sandbox)
        finally:
            sandbox.close()
    result = {
        "records": args.records, "microcredentials": args.microcredentials, "latency_s": args.latency,
        "generate_seconds": round(generated, 2),
        "full_sync": {**full, "records_per_second": round(args.records / full["seconds"], 1)},
        "no_change_resync": again,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
