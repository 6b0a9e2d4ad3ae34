"""Load test of `ragconf serve` (real uvicorn subprocess, asyncio httpx clients) on the handbook example.

For /v1/retrieve and /v1/ask (extractive generator) at 1, 8 and 32 concurrent clients: throughput, p50/p95/p99
latency, error rate; the server's RSS before and after; and the server's overhead over an in-process
`RagService.ask` / `retrieve` measured in the same run (p50 at 1 client minus the in-process p50).
`--corpus scifact` runs the same against the BEIR SciFact corpus (../shared/data/beir/scifact) instead.

    python benchmarks/bench_serve.py [--requests 300] [--clients 1,8,32] [--no-track-asks] [--corpus handbook]

Requests rotate over the handbook personas and a fixed question list. Keep --requests small on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
PERSONAS = ("alice", "bob", "carol", "gina")
QUESTIONS = [
    "When should we fail over the primary database?",
    "What is the meal allowance?",
    "How do I connect to the office wifi?",
    "What are the office hours?",
    "How do I report an expense?",
    "Who approves holidays?",
]


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _setup(work: Path, corpus: str, track_asks: bool) -> tuple[list[str], dict[str, str]]:
    keys = {u: f"bench-{u}-{os.urandom(8).hex()}" for u in PERSONAS}
    lines = [f"- {{sha256: {hashlib.sha256(k.encode()).hexdigest()}, user: {u}}}" for u, k in keys.items()]
    (work / "keys.yaml").write_text("\n".join(lines) + "\n")
    overrides = [
        f"project.workdir={work / 'state'}",
        f"serve.auth.api_keys_file={work / 'keys.yaml'}",
        "serve.max_queue=256",
    ]
    if corpus == "scifact":
        overrides += ["corpus=beir", f"corpus.path={ROOT.parent / 'shared' / 'data' / 'beir' / 'scifact'}"]
    if not track_asks:
        overrides.append("tracking.log_asks=false")
    return overrides, keys


def _in_process(overrides: list[str], n: int) -> dict[str, float]:
    """p50 of the same work without HTTP: RagService.retrieve / ask, sequential."""
    from ragconf.service import RagService

    out: dict[str, float] = {}
    with RagService.from_overrides(overrides) as svc:
        for name, fn in (("retrieve", svc.retrieve), ("ask", svc.ask)):
            fn(QUESTIONS[0], "alice")  # warm
            lat = []
            for i in range(n):  # the same (user, question) sequence as the HTTP load
                t0 = time.perf_counter()
                fn(QUESTIONS[(i // len(PERSONAS)) % len(QUESTIONS)], PERSONAS[i % len(PERSONAS)])
                lat.append((time.perf_counter() - t0) * 1000)
            out[name] = _pct(lat, 0.5)
    from ragconf.tracking import flush

    flush()
    return out


async def _load(url: str, path: str, keys: dict[str, str], clients: int, total: int) -> dict[str, Any]:
    import httpx

    lat: list[float] = []
    errors = 0
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            for i in counter:
                user = PERSONAS[i % len(PERSONAS)]
                body = {"question": QUESTIONS[(i // len(PERSONAS)) % len(QUESTIONS)]}
                t0 = time.perf_counter()
                try:
                    r = await client.post(path, json=body, headers={"Authorization": f"Bearer {keys[user]}"})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                lat.append((time.perf_counter() - t0) * 1000)
                errors += 0 if ok else 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {
        "requests": total,
        "errors": errors,
        "error_rate": errors / total,
        "rps": total / wall,
        "p50_ms": _pct(lat, 0.5),
        "p95_ms": _pct(lat, 0.95),
        "p99_ms": _pct(lat, 0.99),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300, help="requests per (endpoint, concurrency) cell")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--corpus", choices=["handbook", "scifact"], default="handbook")
    ap.add_argument("--no-track-asks", action="store_true", help="tracking.log_asks=false (no MLflow run per ask)")
    ap.add_argument("--in-process", type=int, default=50, help="sequential in-process calls for the baseline")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    overrides, keys = _setup(work, args.corpus, not args.no_track_asks)
    os.chdir(work)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ragconf", "ingest", "--json", *overrides], check=True, capture_output=True)
    print(f"ingested {args.corpus} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    baseline = _in_process(overrides, args.in_process)

    port = _free_port()
    log = (work / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragconf", "serve", *overrides, "--port", str(port)], stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    import httpx

    for _ in range(600):
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    results: dict[str, Any] = {"corpus": args.corpus, "track_asks": not args.no_track_asks, "cells": []}
    try:
        # warm the server the same way as the in-process baseline
        asyncio.run(_load(url, "/v1/ask", keys, 1, 10))
        rss_before = _rss_mb(proc.pid)
        for path in ("/v1/retrieve", "/v1/ask"):
            for clients in [int(c) for c in args.clients.split(",")]:
                cell = asyncio.run(_load(url, path, keys, clients, args.requests))
                cell.update(endpoint=path, clients=clients)
                results["cells"].append(cell)
                print(
                    f"{path:13} c={clients:<3} {cell['rps']:7.1f} req/s  p50 {cell['p50_ms']:7.1f}  "
                    f"p95 {cell['p95_ms']:7.1f}  p99 {cell['p99_ms']:7.1f} ms  errors {cell['errors']}",
                    file=sys.stderr,
                )
        rss_after = _rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
    one = {c["endpoint"]: c for c in results["cells"] if c["clients"] == 1}
    results.update(
        in_process_p50_ms=baseline,
        server_overhead_p50_ms={
            name: one[f"/v1/{name}"]["p50_ms"] - baseline[name] for name in baseline if f"/v1/{name}" in one
        },
        rss_mb={"before": rss_before, "after": rss_after, "growth_pct": 100 * (rss_after / rss_before - 1)},
        total_requests=sum(c["requests"] for c in results["cells"]),
        machine={"cpus": os.cpu_count()},
    )
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    random.seed(0)
    main()
