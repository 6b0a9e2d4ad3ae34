"""`ragconf serve`: governed RAG as an authenticated, streaming HTTP service (``pip install 'ragconf[serve]'``).

``create_app(service)`` builds the FastAPI app; :func:`serve` runs it with uvicorn. See docs/serving.md."""

from __future__ import annotations

from typing import Any

from ragconf.errors import SpecError

__all__ = ["INSTALL_HINT", "create_app", "serve"]

INSTALL_HINT = "pip install 'ragconf[serve]'  (FastAPI, uvicorn, PyJWT, prometheus-client)"


def _require() -> None:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise SpecError(f"`ragconf serve` needs {exc.name}", hint=INSTALL_HINT) from None


def create_app(service: Any, *, warm_up: bool = True) -> Any:
    """The ASGI app serving ``service`` (a :class:`ragconf.service.RagService`)."""
    _require()
    from ragconf.server.app import create_app as _create

    return _create(service, warm_up=warm_up)


def serve(service: Any, *, host: str | None = None, port: int | None = None, log_level: str = "info") -> None:
    """Run the server until SIGINT/SIGTERM; open requests finish and tracked runs are written before exit."""
    _require()
    import uvicorn

    spec = service.spec.serve
    app = create_app(service)
    config = uvicorn.Config(
        app,
        host=host or spec.host,
        port=spec.port if port is None else port,
        log_level=log_level,
        timeout_graceful_shutdown=int(spec.request_timeout_s) + 5,
        server_header=False,
    )
    uvicorn.Server(config).run()
