"""`ragconf serve`: governed RAG as an authenticated, streaming HTTP service (``pip install 'ragconf[serve]'``).

``create_app(service)`` builds the FastAPI app; :func:`serve` runs it with uvicorn in this process and
:func:`run` runs ``serve.workers`` processes (uvicorn workers), each with its own :class:`RagService`.
See docs/serving.md."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ragconf.errors import SpecError

__all__ = ["INSTALL_HINT", "NATIVE_THREAD_VARS", "create_app", "limit_native_threads", "run", "serve"]

INSTALL_HINT = "pip install 'ragconf[serve]'  (FastAPI, uvicorn, PyJWT, prometheus-client)"
#: Native thread pools pinned to one thread per server process unless the environment sets them.
NATIVE_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: How `ragconf serve --workers N` hands the config (config dir + overrides) to its worker processes.
CONFIG_ENV = "RAGCONF_SERVE_CONFIG"


def _require() -> None:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise SpecError(f"`ragconf serve` needs {exc.name}", hint=INSTALL_HINT) from None


def limit_native_threads() -> None:
    """One BLAS/OpenMP thread per server process (requests already run in parallel threads and processes;
    threaded BLAS spins against them on a small machine). A value set in the environment wins. Call before
    numpy is imported; when it already is, the BLAS pool is limited with threadpoolctl when installed."""
    for var in NATIVE_THREAD_VARS:
        os.environ.setdefault(var, "1")
    if "numpy" in sys.modules:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        threadpool_limits(int(os.environ["OPENBLAS_NUM_THREADS"]), user_api="blas")


def create_app(service: Any, *, warm_up: bool = True) -> Any:
    """The ASGI app serving ``service`` (a :class:`ragconf.service.RagService`)."""
    _require()
    from ragconf.server.app import create_app as _create

    return _create(service, warm_up=warm_up)


def _uvicorn_options(spec: Any, host: str | None, port: int | None, log_level: str) -> dict[str, Any]:
    return {
        "host": host or spec.host,
        "port": spec.port if port is None else port,
        "log_level": log_level,
        "timeout_graceful_shutdown": int(spec.request_timeout_s) + 5,
        "timeout_keep_alive": spec.keep_alive_s,
        "server_header": False,
    }


def serve(service: Any, *, host: str | None = None, port: int | None = None, log_level: str = "info") -> None:
    """Run the server in this process until SIGINT/SIGTERM; open requests finish and tracked runs are written
    before exit."""
    _require()
    import uvicorn

    limit_native_threads()
    app = create_app(service)
    uvicorn.Server(uvicorn.Config(app, **_uvicorn_options(service.spec.serve, host, port, log_level))).run()


def run(
    service: Any,
    *,
    config_dir: str | Path | None,
    overrides: list[str] | None,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    log_level: str = "info",
) -> None:
    """`ragconf serve`: ``workers`` (default ``serve.workers``) processes. One process serves ``service``;
    several are uvicorn workers sharing the listening socket, each building its own service from the same
    ``config_dir`` and ``overrides`` (``service`` only checked the config here and is closed)."""
    _require()
    limit_native_threads()  # inherited by worker processes, which import numpy after this
    spec = service.spec.serve
    count = spec.workers if workers is None else workers
    if count < 1:
        raise SpecError(f"--workers must be at least 1, got {count}")
    if count == 1:
        serve(service, host=host, port=port, log_level=log_level)
        return
    import uvicorn

    os.environ[CONFIG_ENV] = json.dumps(
        {"config_dir": None if config_dir is None else str(config_dir), "overrides": list(overrides or [])}
    )
    service.close()
    uvicorn.run(
        "ragconf.server:app_from_env",
        factory=True,
        workers=count,
        **_uvicorn_options(spec, host, port, log_level),
    )


def app_from_env() -> Any:
    """The app of one worker process of `ragconf serve --workers N` (uvicorn factory): its own service built
    from the config the parent process checked (``RAGCONF_SERVE_CONFIG``)."""
    from ragconf.runtime import RagApp
    from ragconf.service import RagService
    from ragconf.spec import load_config

    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise SpecError(f"{CONFIG_ENV} is not set: start worker processes with `ragconf serve --workers N`")
    cfg = json.loads(raw)
    config_dir = Path(cfg["config_dir"]) if cfg.get("config_dir") else None
    rag = RagApp(load_config(config_dir, cfg.get("overrides") or []), config_dir=config_dir)
    return create_app(RagService(rag, source="server"))
