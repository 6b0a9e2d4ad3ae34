"""One experiment per project, `runs list` filters, and the CLI's run spool (real CLI processes, real store)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import run_cli

Q = "How do I fail over the primary database?"


def test_cli_ask_spools_without_mlflow_and_the_next_command_logs_it(handbook_dir: Path) -> None:
    script = f"""
import sys
from ragconf.service import RagService
with RagService.from_overrides([], source="cli") as svc:
    answer = svc.ask({Q!r}, "alice")
print(answer.run_id, "mlflow" in sys.modules)
"""
    env = {**os.environ, "RAGCONF_SPOOL_WRITER": "0"}  # no writer process: the file stays for the next command
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=handbook_dir, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    key, imported = out.stdout.split()
    assert imported == "False"  # a CLI ask never imports mlflow
    spool = handbook_dir / ".ragconf" / "spool"
    files = [p for p in spool.iterdir() if p.name.endswith(".json")]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    assert key in "".join(p.read_text() for p in files)
    listing = run_cli("runs", "list", "--kind", "ask", "--json", cwd=handbook_dir, check=True)
    rows = json.loads(listing.stdout)
    assert key in {r["tags"].get("ragconf.run_key") for r in rows}
    assert not [p for p in spool.iterdir() if p.name.endswith(".json")]


def test_one_experiment_per_project_and_filters(handbook_dir: Path) -> None:
    keys = {}
    for pipeline in ("bm25", "hybrid"):
        proc = run_cli("ask", Q, f"pipeline={pipeline}", "--user", "alice", "--json", cwd=handbook_dir, check=True)
        keys[pipeline] = json.loads(proc.stdout)["run_id"]

    def rows(*args: str) -> list[dict]:
        return json.loads(run_cli("runs", "list", *args, "--json", "-n", "200", cwd=handbook_dir, check=True).stdout)

    everything = rows()
    by_key = {r["tags"].get("ragconf.run_key"): r for r in everything}
    assert {by_key[keys["bm25"]]["experiment"], by_key[keys["hybrid"]]["experiment"]} == {"ragconf"}
    tags = by_key[keys["bm25"]]["tags"]
    assert tags["ragconf.pipeline"] == "bm25" and tags["ragconf.corpus"] == "handbook"
    assert tags["ragconf.generator"] and tags["policy.revision"]
    bm25 = rows("--pipeline", "bm25", "--kind", "ask")
    assert bm25 and {r["pipeline"] for r in bm25} == {"bm25"} and {r["kind"] for r in bm25} == {"ask"}
    assert keys["bm25"] in {r["tags"].get("ragconf.run_key") for r in bm25}
    assert keys["hybrid"] not in {r["tags"].get("ragconf.run_key") for r in bm25}
    assert keys["hybrid"] in {r["tags"].get("ragconf.run_key") for r in rows("--since", "1h")}
    assert rows("--since", "2999-01-01") == []
    bad = run_cli("runs", "list", "--since", "yesterdayish", cwd=handbook_dir)
    assert bad.returncode == 2 and "--since" in bad.stderr and "Traceback" not in bad.stderr
