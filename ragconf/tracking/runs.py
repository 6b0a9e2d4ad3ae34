"""List, compare and load tracked runs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ragconf.errors import TrackingError

__all__ = [
    "compare_runs",
    "format_comparison",
    "get_run",
    "list_runs",
    "load_run_artifact",
    "load_run_config",
    "parse_since",
]

FINGERPRINT_PREFIXES = ("model.", "policy.", "index.", "dataset.", "version.", "config_hash")


def _tracker(cfg: Mapping[str, Any]) -> Any:
    """A tracker for reading runs; runs CLI commands spooled in the working dir are written first."""
    from ragconf.tracking.mlflow_tracker import Tracker, flush_spool

    tracker = Tracker(cfg, workdir=Path(cfg.get("workdir") or ".ragconf"))
    flush_spool(tracker)
    return tracker


def parse_since(value: str) -> int:
    """``--since`` as epoch milliseconds: a duration back from now (``30m``, ``2h``, ``7d``, ``1w``) or an ISO
    date/time (``2026-11-25``, ``2026-11-25T14:00``). TrackingError (exit 2 style hint) otherwise."""
    import datetime as dt
    import re
    import time

    from ragconf.errors import SpecError

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", value)
    if m:
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return int((time.time() - seconds) * 1000)
    try:
        return int(dt.datetime.fromisoformat(value.strip()).timestamp() * 1000)
    except ValueError:
        raise SpecError(
            f"cannot read --since {value!r}", key="--since", hint="use a duration (30m, 2h, 7d) or a date (2026-11-25)"
        ) from None


def list_runs(
    cfg: Mapping[str, Any],
    max_results: int = 50,
    *,
    pipeline: str | None = None,
    kind: str | None = None,
    since: str | None = None,
) -> list[dict[str, Any]]:
    """Runs of every experiment in the store, newest first, filtered by pipeline tag, kind and start time."""
    import datetime as dt

    tracker = _tracker(cfg)
    client = tracker.client()
    clauses = []
    if pipeline:
        clauses.append(f"tags.`ragconf.pipeline` = '{_quote(pipeline)}'")
    if kind:
        clauses.append(f"tags.`ragconf.kind` = '{_quote(kind)}'")
    if since:
        clauses.append(f"attributes.start_time >= {parse_since(since)}")
    try:
        exps = {e.experiment_id: e.name for e in client.search_experiments()}
        runs = client.search_runs(
            list(exps),
            filter_string=" and ".join(clauses),
            max_results=max_results,
            order_by=["attributes.start_time DESC"],
        )
    except Exception as exc:
        raise TrackingError(f"cannot list runs in {tracker.uri}: {' '.join(str(exc).split())[:300]}") from None
    return [
        {
            "run_id": r.info.run_id,
            "kind": r.data.tags.get("ragconf.kind", ""),
            "pipeline": r.data.tags.get("ragconf.pipeline", ""),
            "experiment": exps.get(r.info.experiment_id, ""),
            "start_time": dt.datetime.fromtimestamp(r.info.start_time / 1000).isoformat(timespec="seconds"),
            "status": r.info.status,
            "parent_run_id": r.data.tags.get("mlflow.parentRunId"),
            "metrics": dict(r.data.metrics),
            "tags": {k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.")},
        }
        for r in runs
    ]


def _quote(value: str) -> str:
    return value.replace("\\", "").replace("'", "")


def load_run_config(cfg: Mapping[str, Any], run_id: str) -> tuple[dict[str, Any], list[str]]:
    """(resolved config, overrides) of a logged run; TrackingError for an unknown run id."""
    config, overrides, _ = _load(cfg, run_id)
    return config, overrides


def _load(cfg: Mapping[str, Any], run_id: str) -> tuple[dict[str, Any], list[str], Any]:
    """(resolved config, overrides, run) of a logged run."""
    import json
    import tempfile

    import yaml

    from ragconf.tracking.mlflow_tracker import _require

    tracker = _tracker(cfg)
    client = tracker.client()
    run = _require(client, run_id)
    try:
        local = client.download_artifacts(run.info.run_id, "config.yaml", dst_path=tempfile.mkdtemp(prefix="ragconf-"))
        config = yaml.safe_load(Path(local).read_text())
    except Exception as exc:
        raise TrackingError(f"run '{run_id}' has no readable config.yaml artifact ({exc})") from None
    overrides = json.loads(run.data.tags.get("overrides", "[]"))
    return config, overrides, run


def get_run(cfg: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """One run (by MLflow run id or ragconf run key) as ``{run_id, kind, status, metrics, tags}``."""
    from ragconf.tracking.mlflow_tracker import _require

    run = _require(_tracker(cfg).client(), run_id)
    return {
        "run_id": run.info.run_id,
        "kind": run.data.tags.get("ragconf.kind", ""),
        "status": run.info.status,
        "metrics": dict(run.data.metrics),
        "tags": dict(run.data.tags),
    }


def load_run_artifact(cfg: Mapping[str, Any], run_id: str, path: str) -> str | None:
    """The text of one artifact of a run, or None when the run has no such artifact."""
    import tempfile

    from ragconf.tracking.mlflow_tracker import _require

    client = _tracker(cfg).client()
    run = _require(client, run_id)
    try:
        local = client.download_artifacts(run.info.run_id, path, dst_path=tempfile.mkdtemp(prefix="ragconf-"))
        return Path(local).read_text(encoding="utf-8")
    except Exception:
        return None


def compare_runs(cfg: Mapping[str, Any], run_a: str, run_b: str) -> dict[str, Any]:
    from ragconf.tracking.mlflow_tracker import flatten

    conf_a, ov_a, ra = _load(cfg, run_a)
    conf_b, ov_b, rb = _load(cfg, run_b)
    fa, fb = flatten(conf_a), flatten(conf_b)
    changed = {k: (fa[k], fb[k]) for k in sorted(set(fa) & set(fb)) if fa[k] != fb[k]}
    added = {k: fb[k] for k in sorted(set(fb) - set(fa))}
    removed = {k: fa[k] for k in sorted(set(fa) - set(fb))}
    ta, tb = ra.data.tags, rb.data.tags
    fp = {
        k: (ta.get(k), tb.get(k))
        for k in sorted(set(ta) | set(tb))
        if k.startswith(FINGERPRINT_PREFIXES) and ta.get(k) != tb.get(k)
    }
    ma, mb = ra.data.metrics, rb.data.metrics
    metrics = {
        k: (ma.get(k), mb.get(k), (mb[k] - ma[k]) if k in ma and k in mb else None) for k in sorted(set(ma) | set(mb))
    }
    return {
        "run_a": ra.info.run_id,
        "run_b": rb.info.run_id,
        "overrides": (ov_a, ov_b),
        "config": {"changed": changed, "added": added, "removed": removed},
        "fingerprints": fp,
        "metrics": metrics,
    }


def format_comparison(cmp: Mapping[str, Any]) -> str:
    lines = [f"run A {cmp['run_a']}", f"run B {cmp['run_b']}", "", "config (dotted keys):"]
    conf = cmp["config"]
    if not any(conf.values()):
        lines.append("  identical")
    for k, (a, b) in conf["changed"].items():
        lines.append(f"  ~ {k}: {a!r} -> {b!r}")
    for k, v in conf["added"].items():
        lines.append(f"  + {k}: {v!r}")
    for k, v in conf["removed"].items():
        lines.append(f"  - {k}: {v!r}")
    lines += ["", "models / policies / index / versions:"]
    if not cmp["fingerprints"]:
        lines.append("  unchanged")
    for k, (a, b) in cmp["fingerprints"].items():
        lines.append(f"  ~ {k}: {str(a)[:16]} -> {str(b)[:16]}")
    lines += ["", f"{'metric':24} {'A':>12} {'B':>12} {'delta':>12}"]
    for k, (a, b, d) in cmp["metrics"].items():
        fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
        lines.append(f"{k:24} {fmt(a):>12} {fmt(b):>12} {('' if d is None else f'{d:+.4f}'):>12}")
    return "\n".join(lines)
