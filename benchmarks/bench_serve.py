"""Load test of `ragconf serve` (real uvicorn subprocess, asyncio httpx clients) on the handbook example.

For /v1/retrieve and /v1/ask (extractive generator) at 1, 8 and 32 concurrent clients: throughput, p50/p95/p99
latency, error rate; the server's RSS before and after (all its processes); and the server's overhead over an
in-process `RagService.ask` / `retrieve` measured in the same run (p50 at 1 client minus the in-process p50).
`--corpus scifact` runs the same against the BEIR SciFact corpus (../shared/data/beir/scifact) instead;
`--reuse-store FILE` copies an already ingested store (e.g. /tmp/scifact_work/store/scifact.sqlite from
bench_quality_scifact.py) into place first, so the ingest is incremental (nothing to embed).
`--soak N` then sends N requests alternating /v1/retrieve and /v1/ask at `--soak-clients` clients and reports
errors and RSS growth over them (issue 8: 0 errors, < 10% over 10,000).

    python benchmarks/bench_serve.py [--requests 300] [--clients 1,8,32] [--no-track-asks] [--corpus handbook]
        [--workers 1] [--threads 4] [--soak 10000] [--reuse-store FILE] [--out results.json]

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
    """RSS of ``pid`` and its descendants (the worker processes of `--workers N`)."""
    total = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1]) / 1024
    kids = Path(f"/proc/{pid}/task/{pid}/children")
    for kid in kids.read_text().split() if kids.is_file() else []:
        total += _rss_mb(int(kid))
    return total


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    kids = Path(f"/proc/{pid}/task/{pid}/children")
    for kid in kids.read_text().split() if kids.is_file() else []:
        total += _cpu_s(int(kid))
    return total


def _settle(pid: int, limit_s: float = 60.0) -> float:
    """Wait until the server is idle (its background tracking writes done): < 5% of a core over 0.5 s."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        before = _cpu_s(pid)
        time.sleep(0.5)
        if _cpu_s(pid) - before < 0.025:
            break
    return time.perf_counter() - t0


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


def _in_process(overrides: list[str], n: int) -> tuple[dict[str, float], dict[str, float]]:
    """p50 of the same work without HTTP: RagService.retrieve / ask, sequential; and the CPU ms per call
    (this process, tracking writes flushed)."""
    from ragconf.service import RagService
    from ragconf.tracking import flush

    out: dict[str, float] = {}
    cpu: dict[str, float] = {}
    with RagService.from_overrides([*overrides, "tracking.ask_writer=process"]) as svc:  # as the server does
        for name, fn in (("retrieve", svc.retrieve), ("ask", svc.ask)):
            fn(QUESTIONS[0], "alice")  # warm
            flush()
            lat = []
            c0 = time.process_time()
            for i in range(n):  # the same (user, question) sequence as the HTTP load
                t0 = time.perf_counter()
                fn(QUESTIONS[(i // len(PERSONAS)) % len(QUESTIONS)], PERSONAS[i % len(PERSONAS)])
                lat.append((time.perf_counter() - t0) * 1000)
            flush()
            cpu[name] = (time.process_time() - c0) * 1000 / n
            out[name] = _pct(lat, 0.5)
    return out, cpu


def _paired(overrides: list[str], url: str, keys: dict[str, str], n: int) -> dict[str, Any]:
    """The server's overhead measured in pairs: the same (user, question) in process, then over HTTP (one
    client), alternating, so both halves see the same machine load; the median of the differences."""
    import httpx

    from ragconf.service import RagService

    out: dict[str, Any] = {}
    # runs go to the spool writer process as the server's do: a writer thread in this process would hold the
    # GIL while the HTTP half of the next pair waits for its response
    local_overrides = [*overrides, "tracking.ask_writer=process"]
    with RagService.from_overrides(local_overrides) as svc, httpx.Client(base_url=url, timeout=120) as client:
        for name, fn in (("retrieve", svc.retrieve), ("ask", svc.ask)):
            fn(QUESTIONS[0], "alice")  # warm
            local, remote, diff = [], [], []
            for i in range(n):
                user, question = PERSONAS[i % len(PERSONAS)], QUESTIONS[(i // len(PERSONAS)) % len(QUESTIONS)]
                t0 = time.perf_counter()
                fn(question, user)
                t1 = time.perf_counter()
                r = client.post(
                    f"/v1/{name}", json={"question": question}, headers={"Authorization": f"Bearer {keys[user]}"}
                )
                t2 = time.perf_counter()
                r.raise_for_status()
                local.append((t1 - t0) * 1000)
                remote.append((t2 - t1) * 1000)
                diff.append((t2 - t1 - (t1 - t0)) * 1000)
            out[name] = {
                "pairs": n,
                "in_process_p50_ms": _pct(local, 0.5),
                "http_p50_ms": _pct(remote, 0.5),
                "overhead_median_ms": _pct(diff, 0.5),
            }
    from ragconf.tracking import flush

    flush()
    return out


async def _load(url: str, path: str | list[str], keys: dict[str, str], clients: int, total: int) -> dict[str, Any]:
    """``total`` requests from ``clients`` concurrent clients; a list of paths is used round robin."""
    import httpx

    paths = [path] if isinstance(path, str) else path
    lat: list[float] = []
    by_path: dict[str, list[float]] = {p: [] for p in paths}
    errors = 0
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            for i in counter:
                user = PERSONAS[i % len(PERSONAS)]
                body = {"question": QUESTIONS[(i // len(PERSONAS)) % len(QUESTIONS)]}
                target = paths[i % len(paths)]
                t0 = time.perf_counter()
                try:
                    r = await client.post(target, json=body, headers={"Authorization": f"Bearer {keys[user]}"})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                ms = (time.perf_counter() - t0) * 1000
                lat.append(ms)
                by_path[target].append(ms)
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
        **(
            {
                "by_endpoint": {
                    p: {"p50_ms": _pct(v, 0.5), "p95_ms": _pct(v, 0.95), "p99_ms": _pct(v, 0.99)}
                    for p, v in by_path.items()
                }
            }
            if len(paths) > 1
            else {}
        ),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300, help="requests per (endpoint, concurrency) cell")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--corpus", choices=["handbook", "scifact"], default="handbook")
    ap.add_argument("--no-track-asks", action="store_true", help="tracking.log_asks=false (no MLflow run per ask)")
    ap.add_argument("--in-process", type=int, default=50, help="sequential in-process calls for the baseline")
    ap.add_argument("--paired", type=int, default=40, help="in-process/HTTP pairs for the overhead (0: skip)")
    ap.add_argument("--workers", type=int, default=1, help="server processes (ragconf serve --workers)")
    ap.add_argument("--threads", type=int, default=None, help="serve.threads per process (default: the config's)")
    ap.add_argument("--soak", type=int, default=0, help="then N requests alternating retrieve/ask; RSS growth")
    ap.add_argument("--soak-clients", type=int, default=8)
    ap.add_argument("--reuse-store", type=Path, help="an ingested store file to copy into place before ingest")
    ap.add_argument("--set", action="append", default=[], help="extra config override (repeatable)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.out:
        args.out = args.out.resolve()  # the run chdirs into its work dir
    if args.reuse_store:
        args.reuse_store = args.reuse_store.resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    overrides, keys = _setup(work, args.corpus, not args.no_track_asks)
    if args.threads:
        overrides.append(f"serve.threads={args.threads}")
    overrides += args.set
    os.chdir(work)
    if args.reuse_store:
        dest = work / "state" / "store" / args.reuse_store.name
        dest.parent.mkdir(parents=True, mode=0o700)
        shutil.copy2(args.reuse_store, dest)
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ragconf", "ingest", "--json", *overrides], check=True, capture_output=True, text=True
    )
    print(f"ingested {args.corpus} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    ingest_summary = json.loads(done.stdout) if done.stdout.strip().startswith("{") else done.stdout[-300:]
    baseline, baseline_cpu = _in_process(overrides, args.in_process)

    port = _free_port()
    log = (work / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragconf", "serve", *overrides, "--port", str(port), "--workers", str(args.workers)],
        stdout=log,
        stderr=log,
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
    results: dict[str, Any] = {
        "corpus": args.corpus,
        "track_asks": not args.no_track_asks,
        "workers": args.workers,
        "overrides": [o for o in overrides if not o.startswith(("project.workdir", "serve.auth"))],
        "ingest": ingest_summary,
        "load_before": os.getloadavg(),
        "cells": [],
    }
    try:
        # warm the server the same way as the in-process baseline (every worker process)
        asyncio.run(_load(url, "/v1/ask", keys, max(1, args.workers), 10 * max(1, args.workers)))
        if args.paired:
            results["paired_overhead"] = _paired(overrides, url, keys, args.paired)
            for name, row in results["paired_overhead"].items():
                print(
                    f"overhead {name}: in-process p50 {row['in_process_p50_ms']:.1f}, HTTP p50 "
                    f"{row['http_p50_ms']:.1f}, median difference {row['overhead_median_ms']:.1f} ms",
                    file=sys.stderr,
                )
        rss_before = _rss_mb(proc.pid)
        for path in ("/v1/retrieve", "/v1/ask"):
            for clients in [int(c) for c in args.clients.split(",")]:
                _settle(proc.pid)
                c0 = _cpu_s(proc.pid)
                cell = asyncio.run(_load(url, path, keys, clients, args.requests))
                cell["settle_s"] = _settle(proc.pid)  # the cell's tracking backlog being written after it
                cell["server_cpu_ms_per_request"] = (_cpu_s(proc.pid) - c0) * 1000 / args.requests
                cell.update(endpoint=path, clients=clients)
                results["cells"].append(cell)
                print(
                    f"{path:13} c={clients:<3} {cell['rps']:7.1f} req/s  p50 {cell['p50_ms']:7.1f}  "
                    f"p95 {cell['p95_ms']:7.1f}  p99 {cell['p99_ms']:7.1f} ms  errors {cell['errors']}  "
                    f"server CPU {cell['server_cpu_ms_per_request']:.1f} ms/req  settle {cell['settle_s']:.1f} s",
                    file=sys.stderr,
                )
        rss_after = _rss_mb(proc.pid)
        if args.soak:
            soak_before = rss_after
            t0 = time.perf_counter()
            soak = asyncio.run(_load(url, ["/v1/retrieve", "/v1/ask"], keys, args.soak_clients, args.soak))
            soak_after = _rss_mb(proc.pid)
            soak.update(
                clients=args.soak_clients,
                seconds=time.perf_counter() - t0,
                rss_mb={"before": soak_before, "after": soak_after, "growth_pct": 100 * (soak_after / soak_before - 1)},
            )
            results["soak"] = soak
            print(
                f"soak {args.soak} requests c={args.soak_clients}: {soak['rps']:.1f} req/s, errors {soak['errors']}, "
                f"RSS {soak_before:.0f} -> {soak_after:.0f} MB",
                file=sys.stderr,
            )
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
    one = {c["endpoint"]: c for c in results["cells"] if c["clients"] == 1}
    results.update(
        in_process_p50_ms=baseline,
        in_process_cpu_ms_per_call=baseline_cpu,
        server_overhead_p50_ms={
            name: one[f"/v1/{name}"]["p50_ms"] - baseline[name] for name in baseline if f"/v1/{name}" in one
        },
        rss_mb={"before": rss_before, "after": rss_after, "growth_pct": 100 * (rss_after / rss_before - 1)},
        total_requests=sum(c["requests"] for c in results["cells"]),
        machine={"cpus": os.cpu_count(), "load_after": os.getloadavg()},
    )
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    random.seed(0)
    main()
