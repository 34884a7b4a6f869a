"""Benchmark: mcsync against the naive script an institution would write by hand, side by side.

    .venv/bin/python bench/bench_naive.py [--records 2000] [--microcredentials 10] [--latency 0.02]
        [--extrapolate-to 100000] [--mcsync-full-rate R --mcsync-full-records N]

The naive script (`naive_sync` below) reads the Osiris export, and for each passed row, one after the
other, sends ONE Edubadges direct-award create request with ONE award in it (`POST
/directaward/create`, the body shape mcsync's Edubadges client sends, edubadges-api.md §1.1) and waits
for the answer before the next. It gets its token as the Edubadges target does: client credentials
with HTTP Basic at the token endpoint, kept for the run, renewed once on a 403. It reuses one HTTP
connection (keep-alive), which is the generous assumption. Nothing else: no RIO, no register, no state,
no duplicate check, no retry.

Both run against `mcsync sandbox` as a separate process with `--latency` seconds added to every
request, each in a fresh sandbox, on the same generated `--records` (bench_sync.generate):

1. the naive script;
2. mcsync's sync with only `[targets.edubadges]` enabled, the engine in this process (bench_sync.timed_run):
   read, map, plan, bundle, deliver and record, end to end.

Reports both rates and the ratio (mcsync records/s ÷ naive records/s). A naive run of 100,000 records
at 20 ms would take more than half an hour, so the naive time per record is extrapolated linearly to
`--extrapolate-to` records (labelled as such: the naive script does the same thing per record whatever
the size). When run_all passes the measured full three-target sync rate of bench_sync
(`--mcsync-full-rate`, `--mcsync-full-records`), the ratio of that to the extrapolated naive rate is
reported too. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import httpx
from bench_memory import config_variant
from bench_sync import SandboxProcess, generate, timed_run

from mcsync.config import load_config
from mcsync.sandbox import DEMO_CLIENT, EDUBADGES, point_config


def naive_sync(folder: Path, api_url: str, token_url: str, client: tuple[str, str]) -> dict[str, object]:
    """What an institution scripts by hand: one create request per passed result, sequentially."""
    mapping = tomllib.loads((folder / "mapping.toml").read_text(encoding="utf-8"))
    threshold = float(mapping["grading"]["pass_threshold"])
    badgeclass = {mc["code"]: mc["edubadges"]["badgeclass"] for mc in mapping["microcredentials"]}
    settings = tomllib.loads((folder / "mcsync.toml").read_text(encoding="utf-8"))
    eppn_template = settings["institution"]["eppn_template"]
    sent = created = refused = skipped = tokens = 0
    errors: list[str] = []
    with httpx.Client(timeout=60) as http:

        def token() -> str:
            nonlocal tokens
            answer = http.post(token_url, auth=httpx.BasicAuth(*client),
                               data={"grant_type": "client_credentials", "scope": "edubadges.nl/sis"},
                               headers={"Accept": "application/json"})
            answer.raise_for_status()
            tokens += 1
            return answer.json()["access_token"]

        bearer = token()
        with open(folder / "results.csv", encoding="utf-8", newline="") as export:
            for row in csv.DictReader(export, delimiter=";"):
                grade = row["resultaat"].strip()
                try:
                    passed = float(grade.replace(",", ".")) >= threshold
                except ValueError:
                    passed = False
                if not passed or row["cursuscode"] not in badgeclass:
                    skipped += 1
                    continue
                surname = " ".join(p for p in (row["tussenvoegsel"], row["achternaam"]) if p)
                award = {"eppn": eppn_template.format(student_number=row["studentnummer"]).lower(),
                         "recipient_email": row["email"].lower(), "first_name": row["voornaam"],
                         "surname": surname, "grade_achieved": grade}
                body = {"badgeclass": badgeclass[row["cursuscode"]], "identifier_type": "eppn",
                        "notify_recipients": True, "batch_mode": False, "sis_user_id": "naive",
                        "direct_awards": [award]}
                for attempt in (1, 2):
                    answer = http.post(api_url + "/directaward/create", json=body,
                                       headers={"Authorization": f"Bearer {bearer}",
                                                "Content-Type": "application/json", "Accept": "application/json"})
                    sent += 1
                    if answer.status_code == 403 and attempt == 1:
                        bearer = token()
                        continue
                    break
                if answer.status_code == 201 and not answer.json().get("un_successful_direct_award"):
                    created += 1
                else:
                    refused += 1
                    if len(errors) < 5:
                        errors.append(f"{answer.status_code} {answer.text[:200]}")
    return {"create_requests": sent, "created": created, "refused": refused, "not_passed": skipped,
            "token_requests": tokens, "errors": errors}


def round_trip_ms(url: str, probes: int = 21) -> float:
    """Median time of a trivial GET on one keep-alive connection: what one request costs in this sandbox,
    its `--latency` included. Much more than the latency means an artifact of the sandbox's HTTP server
    (which then burdens the naive script, one request per record, far more than mcsync)."""
    with httpx.Client(timeout=10) as http:
        http.get(url + "/_sandbox/stats")
        times = []
        for _ in range(probes):
            started = time.perf_counter()
            http.get(url + "/_sandbox/stats")
            times.append(time.perf_counter() - started)
    return round(sorted(times)[len(times) // 2] * 1000, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2_000)
    parser.add_argument("--microcredentials", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per request, in the sandbox")
    parser.add_argument("--extrapolate-to", type=int, default=100_000)
    parser.add_argument("--mcsync-full-rate", type=float, help="records/s of bench_sync's full three-target sync")
    parser.add_argument("--mcsync-full-records", type=int, help="at how many records that was measured")
    args = parser.parse_args()
    n = args.records
    with tempfile.TemporaryDirectory(prefix="mcsync-bench-naive-") as tmp:
        folder = Path(tmp)
        generate(folder, n, args.microcredentials)

        sandbox = SandboxProcess(folder / "mcsync.toml", args.latency)
        try:
            probe_ms = round_trip_ms(sandbox.url)
            writes_before = sandbox.stats()["write_requests"]
            started = time.perf_counter()
            naive = naive_sync(folder, sandbox.url + EDUBADGES, sandbox.url + EDUBADGES + "/oidc/token", DEMO_CLIENT)
            naive_seconds = time.perf_counter() - started
            naive["write_requests"] = sandbox.stats()["write_requests"] - writes_before
            naive["sandbox_holds"] = sandbox.stats()["summary"]
        finally:
            sandbox.close()

        config = load_config(config_variant(folder, enabled=("edubadges",), state="mcsync-edubadges.db",
                                            name="mcsync-edubadges.toml"))
        sandbox = SandboxProcess(folder / "mcsync.toml", args.latency)
        try:
            config = point_config(config, sandbox.url, state_path=folder / "mcsync-edubadges.db",
                                  signing_dir=folder / "pki")
            ours = timed_run(config, sandbox)
            ours["sandbox_holds"] = sandbox.stats()["summary"]
        finally:
            sandbox.close()

    naive_rate = n / naive_seconds
    ours_rate = n / ours["seconds"]
    per_record = naive_seconds / n
    at = args.extrapolate_to
    result: dict[str, object] = {
        "records": n, "microcredentials": args.microcredentials, "latency_s": args.latency,
        "naive": {"what": "one create request per passed record with one award, sequential, one keep-alive "
                          "connection; Edubadges only", "seconds": round(naive_seconds, 2),
                  "records_per_second": round(naive_rate, 1), "ms_per_record": round(per_record * 1000, 2),
                  **naive},
        "mcsync_edubadges_only": {"what": "Engine(config, store).run() with only [targets.edubadges] enabled, "
                                          "end to end (read, map, plan, deliver, record)",
                                  "records_per_second": round(ours_rate, 1), **ours},
        "ratio": round(ours_rate / naive_rate, 1),
        "ratio_what": f"mcsync Edubadges-only records/s ÷ naive records/s, both measured at {n:,} records",
        "sandbox_round_trip_ms": probe_ms,
        "sandbox_round_trip_note": (
            f"median of a trivial keep-alive GET with {args.latency * 1000:g} ms latency configured"
            + (f"; {probe_ms - args.latency * 1000:.0f} ms more than the latency: an artifact of the sandbox's "
               "HTTP server that the naive script pays on every record, so the ratio above is overstated; "
               "see ratio_vs_ideal_naive" if probe_ms > args.latency * 1000 + 5 else "")),
        "ideal_naive_records_per_second": round(1 / args.latency, 1) if args.latency else None,
        "ratio_vs_ideal_naive": round(ours_rate * args.latency, 1) if args.latency else None,
        "ratio_vs_ideal_naive_what": "mcsync Edubadges-only records/s ÷ (1 / latency): against a naive script "
                                     "that costs only the latency per record, nothing else (its upper bound)",
        "naive_extrapolated": {
            "what": f"EXTRAPOLATED, not measured: the naive time per record at {n:,} records × {at:,}",
            "records": at, "seconds": round(per_record * at, 1), "minutes": round(per_record * at / 60, 1),
            "records_per_second": round(naive_rate, 1)},
        "correct": (naive["created"] == n and naive["write_requests"] == n
                    and ours["delivered"].get("edubadges", 0) == n and ours["exit_code"] == 0),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
    }
    if args.mcsync_full_rate:
        where = f"{args.mcsync_full_records:,} records" if args.mcsync_full_records else "bench_sync's size"
        result["ratio_full_sync_vs_naive_extrapolated"] = {
            "ratio": round(args.mcsync_full_rate / naive_rate, 1),
            "what": f"MEASURED mcsync full sync, all three targets, at {where} (bench_sync: "
                    f"{args.mcsync_full_rate:,.1f} records/s) ÷ naive Edubadges-only rate measured at {n:,} records "
                    f"and EXTRAPOLATED to {at:,} ({naive_rate:,.1f} records/s)",
            "ratio_vs_ideal_naive": round(args.mcsync_full_rate * args.latency, 1) if args.latency else None}
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0 if result["correct"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
