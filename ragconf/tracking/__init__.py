"""Run tracking in MLflow: manifests, listing, comparison."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ragconf.tracking.mlflow_tracker import (
    DeferredRun,
    NullRun,
    NullTracker,
    RunHandle,
    Tracker,
    flatten,
    flush,
    sha256_files,
)
from ragconf.tracking.runs import (
    compare_runs,
    format_comparison,
    get_run,
    list_runs,
    load_run_artifact,
    load_run_config,
)

__all__ = [
    "DeferredRun",
    "NullRun",
    "NullTracker",
    "RunHandle",
    "Tracker",
    "compare_runs",
    "flatten",
    "flush",
    "format_comparison",
    "get_run",
    "list_runs",
    "load_run_artifact",
    "load_run_config",
    "make_tracker",
    "sha256_files",
]


def make_tracker(
    cfg: Mapping[str, Any], *, workdir: Path, spool: bool = False, writer: str = "thread"
) -> Tracker | NullTracker:
    """The tracker the `tracking` config asks for (a NullTracker when disabled). The store is opened in the
    background right away, so a run started after some work (an eval) rarely waits for mlflow's import.
    ``spool=True`` (the CLI): ask/retrieve runs are spooled to files for a writer process and mlflow is not
    imported in this process until a foreground run (eval, ingest) needs it (:meth:`Tracker.warm_up`).
    ``writer="process"`` (a server): the background thread hands each ask/retrieve run to that spool and its
    writer process instead of writing it to MLflow itself."""
    if not cfg.get("enabled", True):
        return NullTracker()
    tracker = Tracker(cfg, workdir=Path(workdir), spool=spool, writer=writer)
    if not spool:
        tracker.warm_up()  # import mlflow / open the store while the caller works
    return tracker
