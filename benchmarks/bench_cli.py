"""The CLI as users run it: wall time of `ragconf ask ... --user U` as a process, tracked vs `tracking=disabled`,
against `python -c "import haystack"` (cold start). Runs are interleaved (import, tracked, untracked) so machine
load drifts hit all three alike; the median of N is reported with the ratios. Before each tracked run the spool
writer of the previous one is waited for (untimed), so runs never overlap with a writer.

    python benchmarks/bench_cli.py [--runs 5] [--user alice] [--question "..."] [--json]

Works in a temporary dir where the handbook example is ingested once (untimed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

Q = "How do I fail over the primary database?"


def _wall(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _wait_writer(work: Path, timeout: float = 120) -> float:
    spool = work / ".ragconf" / "spool"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        pending = (
            [p for p in spool.glob("*") if p.name.endswith(".json") or ".claimed-" in p.name] if spool.is_dir() else []
        )
        if not pending and not (spool / "writer.pid").exists():
            break
        time.sleep(0.1)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--user", default="alice")
    ap.add_argument("--question", default=Q)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HAYSTACK_TELEMETRY_ENABLED": "False"}
    cli = [sys.executable, "-m", "ragconf"]
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        work = Path(tmp)
        subprocess.run([*cli, "ingest"], cwd=work, env=env, check=True, capture_output=True)
        ask = [*cli, "ask", args.question, "--user", args.user]
        # one untimed warm-up of each (page cache, the store's first open)
        _wall(ask, work, env)
        _wait_writer(work)
        _wall([*ask, "tracking=disabled"], work, env)
        rows: dict[str, list[float]] = {"import_haystack": [], "ask_tracked": [], "ask_untracked": []}
        writer: list[float] = []
        for _ in range(args.runs):
            rows["import_haystack"].append(_wall([sys.executable, "-c", "import haystack"], work, env))
            rows["ask_tracked"].append(_wall(ask, work, env))
            writer.append(_wait_writer(work))
            rows["ask_untracked"].append(_wall([*ask, "tracking=disabled"], work, env))
        runs = subprocess.run(
            [*cli, "runs", "list", "--kind", "ask", "--json", "-n", "100"], cwd=work, env=env, capture_output=True
        )
        logged = len(json.loads(runs.stdout)) if runs.returncode == 0 else -1
    med = {k: statistics.median(v) for k, v in rows.items()}
    out = {
        "runs": args.runs,
        "user": args.user,
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "all_s": {k: [round(x, 3) for x in v] for k, v in rows.items()},
        "tracked_over_untracked": round(med["ask_tracked"] / med["ask_untracked"], 3),
        "tracked_cold_start_over_import_haystack": round(med["ask_tracked"] / med["import_haystack"], 3),
        "untracked_cold_start_over_import_haystack": round(med["ask_untracked"] / med["import_haystack"], 3),
        "writer_drain_after_ask_s_median": round(statistics.median(writer), 3),
        "ask_runs_logged": logged,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:42} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
