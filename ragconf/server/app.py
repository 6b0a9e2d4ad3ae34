"""The FastAPI application: auth -> principal, routes, SSE, limits, metrics. Every request goes through the
service layer; nothing a request carries can change identity, policy, store or pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.sse import format_sse_event

from ragconf.errors import PolicyError, RagconfError, SpecError
from ragconf.server.auth import Authenticator, AuthError, FailedAuthLimiter, client_key, has_role
from ragconf.server.metrics import Metrics
from ragconf.server.schemas import AskBody, ChatBody, FeedbackBody, RetrieveBody
from ragconf.service import NO_CITED_ANSWER, RagService
from ragconf.types import Principal

__all__ = ["ApiError", "create_app"]

ROUTES = {
    "/v1/ask",
    "/v1/retrieve",
    "/v1/chat/completions",
    "/v1/feedback",
    "/v1/admin/reload",
    "/v1/admin/ingest",
    "/v1/admin/ingest/{job_id}",
    "/healthz",
    "/readyz",
    "/metrics",
}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
INGEST_JOB = "/v1/admin/ingest/{job_id}"
INGEST_JOB_PREFIX = "/v1/admin/ingest/"


class ApiError(Exception):
    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers
        self.extra = extra


class RateLimiter:
    """``serve.rate_limit_per_minute``: a token bucket per authenticated user in this process (bursts up to one
    minute's worth); 429 with ``Retry-After`` beyond. Used only on the event loop, so it needs no lock."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.buckets: dict[str, tuple[float, float]] = {}  # user -> (tokens, monotonic time)

    def check(self, user: str) -> None:
        if not self.per_minute:
            return
        now = time.monotonic()
        tokens, last = self.buckets.get(user, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self.buckets[user] = (tokens, now)
            retry = max(1, int((1.0 - tokens) / self.rate + 0.999))
            raise ApiError(
                429,
                f"rate limit exceeded: serve.rate_limit_per_minute={self.per_minute} per user; retry in {retry}s",
                headers={"Retry-After": str(retry)},
            )
        self.buckets[user] = (tokens - 1.0, now)


class IngestJobs:
    """``POST /v1/admin/ingest`` as a background job: one at a time per process (the store's ingest file lock
    also serialises processes and CLI ingests), in its own thread, not the request pool. Each job's status is a
    JSON file under ``<workdir>/serve-jobs/`` so any worker process of the server can report it."""

    def __init__(self, service: RagService) -> None:
        self.service = service
        self.dir = Path(service.rag.workdir) / "serve-jobs"
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.current: str | None = None

    def start(self, user: str) -> dict[str, Any]:
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                raise ApiError(
                    409,
                    f"ingest job {self.current} is still running",
                    job_id=self.current,
                    status_url=f"{INGEST_JOB_PREFIX}{self.current}",
                )
            job_id = uuid.uuid4().hex
            record = {
                "job_id": job_id,
                "status": "running",
                "user": user,
                "started": _now(),
                "finished": None,
                "pid": os.getpid(),
                "status_url": f"{INGEST_JOB_PREFIX}{job_id}",
            }
            self._write(record)
            self.current = job_id
            self.thread = threading.Thread(target=self._run, args=(record,), name="ragconf-ingest")
            self.thread.start()
        return record

    def _run(self, record: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        try:
            result = self.service.ingest()
            record = {**record, "status": "succeeded", "result": result.to_dict()}
        except Exception as exc:
            record = {**record, "status": "failed", "error": _error_from(exc).detail}
        record.update(finished=_now(), seconds=round(time.perf_counter() - t0, 3))
        try:
            self._write(record)
        except OSError as exc:  # the job's outcome is also in the tracked ingest run
            print(f"warning: cannot write ingest job status {record['job_id']}: {exc}", file=sys.stderr)

    def get(self, job_id: str) -> dict[str, Any]:
        path = self.dir / f"{job_id}.json"
        if not _JOB_ID.fullmatch(job_id) or not path.is_file():
            raise ApiError(404, f"no ingest job '{job_id}'")
        record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if record.get("status") == "running" and not _alive(int(record.get("pid") or 0)):
            record["status"] = "interrupted"  # the process running it died before it finished
        return record

    def _write(self, record: dict[str, Any]) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.dir / f".{record['job_id']}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record, default=str), encoding="utf-8")
        os.replace(tmp, self.dir / f"{record['job_id']}.json")

    def join(self) -> None:
        thread = self.thread
        if thread is not None and thread.is_alive():
            print(f"ragconf serve: waiting for ingest job {self.current} to finish", file=sys.stderr)
            thread.join()


_JOB_ID = re.compile(r"[0-9a-f]{32}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Limits:
    """Pure ASGI middleware: body size limit (413) and per-route metrics (status, latency, streams included)."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in ROUTES else INGEST_JOB if path.startswith(INGEST_JOB_PREFIX) else "other"
        limit = self.state.spec.max_body_bytes
        started = time.perf_counter()
        status = {"code": 500}
        over = {"limit": False, "replaced": False}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if over["limit"]:  # the app failed on a truncated body: answer 413 instead, once
                if not over["replaced"]:
                    over["replaced"] = True
                    await _send_json(send_plain, 413, {"detail": _too_large(limit)})
                return
            await send_plain(message)

        async def send_plain(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.state.metrics.observe(route, status["code"], time.perf_counter() - started)

        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_json(send_plain, 413, {"detail": _too_large(limit)})
            return
        seen = 0

        async def receive_wrapper() -> dict[str, Any]:
            nonlocal seen
            if over["limit"]:
                return {"type": "http.request", "body": b"", "more_body": False}
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # a chunked body over the limit: stop reading, end the body here
                    over["limit"] = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        await self.app(scope, receive_wrapper, send_wrapper)


def _too_large(limit: int) -> str:
    return f"request body larger than serve.max_body_bytes={limit} bytes"


async def _send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class ServerState:
    """What the routes share: the service, the authenticator, metrics and the bounded worker pool."""

    def __init__(self, service: RagService) -> None:
        self.service = service
        self.spec = service.spec.serve
        self.auth = Authenticator(self.spec.auth, service.rag.directory)
        self.metrics = Metrics()
        self.pool = ThreadPoolExecutor(max_workers=self.spec.threads, thread_name_prefix="ragconf-worker")
        self.pending = 0  # running or queued in the pool (touched only on the event loop)
        self.limiter = RateLimiter(self.spec.rate_limit_per_minute)
        self.failures = FailedAuthLimiter(self.spec.auth.failed_attempts)
        self.jobs = IngestJobs(service)

    def authenticate(self, request: Request) -> Principal:
        """The request's principal. A client address past ``serve.auth.failed_attempts`` gets 429 before any
        credential it sent is looked at; a credential that fails (401) counts against its address."""
        client = client_key(request.client.host) if request.client else "unknown"
        wait = self.failures.retry_after(client)
        if wait:
            spec = self.spec.auth.failed_attempts
            raise ApiError(
                429,
                f"too many failed authentications from this address (serve.auth.failed_attempts.limit={spec.limit} "
                f"in {spec.window_s:g}s); retry in {wait}s",
                headers={"Retry-After": str(wait)},
            )
        try:
            return self.auth.authenticate(request.headers)
        except AuthError as exc:
            if exc.status == 401 and exc.presented and self.failures.failed(client):
                spec = self.spec.auth.failed_attempts
                print(
                    f"ragconf serve: {spec.limit} failed authentications from {client} within {spec.window_s:g}s; "
                    f"answering it 429 for {self.failures.retry_after(client)}s",
                    file=sys.stderr,
                )
            raise ApiError(exc.status, exc.detail) from None

    def submit(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run ``fn`` in the worker pool; 503 when ``threads + max_queue`` requests are already waiting."""
        if self.pending >= self.spec.threads + self.spec.max_queue:
            raise ApiError(503, "the server is busy (worker pool and queue are full); retry later")
        loop = asyncio.get_running_loop()
        self.pending += 1
        self.metrics.in_flight.inc()
        fut = asyncio.wrap_future(self.pool.submit(fn), loop=loop)

        def done(_: Any) -> None:  # runs on the loop, also when the caller stopped waiting (timeout)
            self.pending -= 1
            self.metrics.in_flight.dec()

        fut.add_done_callback(done)
        return fut

    async def run(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        fut = self.submit(fn)
        limit = self.spec.request_timeout_s if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(fut), limit)
        except TimeoutError:
            raise ApiError(504, f"the request took longer than serve.request_timeout_s={limit:g}s") from None

    def check_question(self, question: str, top_k: int | None) -> None:
        if len(question) > self.spec.max_question_chars:
            raise ApiError(
                422,
                f"question is {len(question)} characters; the limit is serve.max_question_chars="
                f"{self.spec.max_question_chars}",
            )
        if not question.strip():
            raise ApiError(422, "question is empty")
        if top_k is not None and top_k > self.spec.max_top_k:
            raise ApiError(422, f"top_k={top_k} is above serve.max_top_k={self.spec.max_top_k}")

    def warm_up(self) -> None:
        """Build every part now (store, models, policies, stages, tracker) so the first request is fast and a
        broken config fails at start."""
        rag = self.service.rag
        rag.store  # noqa: B018
        rag.embedder.embed(["warm up"])
        rag.retrieval  # noqa: B018
        for name in rag.profiles:
            stage = rag.generation(name)
            try:  # the generators' clients too (the OpenAI SDK import alone takes seconds on a cold start)
                stage.pipeline.warm_up()
            except RagconfError as exc:  # e.g. a profile's API key is not set: its requests will say so
                print(
                    f"warning: generator profile '{name}' did not warm up: {str(exc).splitlines()[0]}", file=sys.stderr
                )
        self.service.tracker  # noqa: B018
        with contextlib.suppress(Exception):  # PII redaction models, when installed
            from ragconf.policy.redact import warm_up

            warm_up()


def _error_from(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, AuthError):
        return ApiError(exc.status, exc.detail)
    if isinstance(exc, PolicyError):
        return ApiError(403, str(exc).splitlines()[0])
    if isinstance(exc, SpecError):
        return ApiError(422, str(exc).splitlines()[0])
    if isinstance(exc, RagconfError):
        return ApiError(500, str(exc).splitlines()[0])
    return ApiError(500, f"internal error: {type(exc).__name__}")


def _public(result: Any) -> dict[str, Any]:
    """A result dataclass as a dict for JSON, without the trace: a shallow view (``asdict`` deep-copies every
    document, span and citation only to have them encoded once)."""
    return {f.name: getattr(result, f.name) for f in fields(result) if f.name != "trace"}


def _dumps(data: Any) -> bytes:
    """JSON as Starlette's JSONResponse writes it; called in the worker thread, off the event loop."""
    return json.dumps(data, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


def _json(data: bytes, status: int = 200) -> Response:
    return Response(data, status_code=status, media_type="application/json")


def _final_event(answer: Any) -> dict[str, Any]:
    replaced = answer.answer == NO_CITED_ANSWER
    return {
        "answer": answer.answer,
        "citations": answer.citations,
        "decision_ids": answer.decision_ids,
        "route": answer.route,
        "run_id": answer.run_id,
        "redacted": answer.redacted,
        "usage": answer.usage,
        "replaced": replaced,
        "notice": NO_CITED_ANSWER if replaced else None,
    }


def create_app(service: RagService, *, warm_up: bool = True) -> FastAPI:
    """The ASGI app for ``service`` (whose config, including ``serve``, is fixed from here on)."""
    state = ServerState(service)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if warm_up:
            await asyncio.get_running_loop().run_in_executor(state.pool, state.warm_up)
        yield
        # graceful shutdown: uvicorn has drained open requests; finish workers, write pending runs
        await asyncio.get_running_loop().run_in_executor(None, _shutdown, state)

    app = FastAPI(
        title="ragconf",
        version=_version(),
        description="Governed RAG: every request is authenticated, authorised by the access policy, audited "
        "and tracked. See docs/serving.md.",
        lifespan=lifespan,
    )
    app.state.ragconf = state
    app.add_middleware(Limits, state=state)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else exc.headers
        if request.url.path == "/v1/chat/completions":
            kind = {
                401: "authentication_error",
                403: "permission_denied",
                422: "invalid_request_error",
                429: "rate_limit_exceeded",
            }
            body: dict[str, Any] = {
                "error": {"message": exc.detail, "type": kind.get(exc.status, "server_error"), "code": exc.status}
            }
            body["error"].update(exc.extra)
        else:
            body = {"detail": exc.detail, **exc.extra}
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            msg = "unknown field (requests cannot set it)" if err.get("type") == "extra_forbidden" else err["msg"]
            problems.append(f"{loc}: {msg}" if loc else msg)
        return await api_error(request, ApiError(422, "invalid request body: " + "; ".join(problems)))

    async def principal(request: Request) -> Principal:
        user = state.authenticate(request)
        state.limiter.check(user.id)
        return user

    async def admin(user: Principal = Depends(principal)) -> Principal:  # noqa: B008
        if not state.auth.is_admin(user):
            raise ApiError(403, f"user '{user.id}' lacks the '{state.spec.auth.admin_role}' role")
        return user

    # ----- health ------------------------------------------------------------------------------------
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def _is_admin(request: Request) -> bool:
        try:
            return bool(state.auth.is_admin(state.authenticate(request)))
        except Exception:  # no or bad credentials (a bad one counts as a failed attempt), or blocked: a probe
            return False

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        """Ready or not for anyone (load balancers); the details (document count, policy revision, users, the
        error) only for the admin role: they describe the corpus and the setup."""
        admin = _is_admin(request)
        try:
            info = await state.run(service.readiness, timeout=5)
        except Exception as exc:
            detail = _error_from(exc).detail if admin else "not ready"
            return JSONResponse({"ready": False, "detail": detail}, status_code=503)
        return JSONResponse({"ready": True, **(info if admin else {})})

    @app.get("/metrics", tags=["health"])
    async def metrics(request: Request) -> Response:
        """Prometheus. With ``serve.metrics.auth`` (the default) only for the ``serve.metrics.role`` or admin
        role: 401 without credentials, 403 for other users, never the metrics."""
        if state.spec.metrics.auth:
            user = state.authenticate(request)
            role = state.spec.metrics.role
            if not (has_role(user, role) or state.auth.is_admin(user)):
                raise ApiError(403, f"user '{user.id}' lacks the '{role}' or '{state.spec.auth.admin_role}' role")
        data, ctype = state.metrics.render()
        return Response(data, media_type=ctype)

    # ----- retrieval and answers ---------------------------------------------------------------------
    @app.post("/v1/retrieve", tags=["rag"])
    async def retrieve(body: RetrieveBody, user: Principal = Depends(principal)) -> Response:  # noqa: B008
        state.check_question(body.question, body.top_k)
        try:
            data = await state.run(lambda: _dumps(_public(service.retrieve(body.question, user, top_k=body.top_k))))
        except Exception as exc:
            raise _error_from(exc) from None
        return _json(data)

    @app.post("/v1/ask", tags=["rag"], response_model=None)
    async def ask(body: AskBody, user: Principal = Depends(principal)) -> Response:  # noqa: B008
        state.check_question(body.question, body.top_k)
        if body.stream:
            return await _stream(state, body.question, user, body.profile, body.top_k, _sse_ask)

        def work() -> tuple[Any, bytes]:  # the answer is encoded in the worker thread
            answer = service.ask(body.question, user, profile=body.profile, top_k=body.top_k)
            return answer, b"" if answer.refused else _dumps(_public(answer))

        try:
            answer, data = await state.run(work)
        except Exception as exc:
            raise _error_from(exc) from None
        state.metrics.answer(answer)
        if answer.refused:
            raise ApiError(
                403,
                answer.reason or answer.answer,
                refused=True,
                decision_ids=answer.decision_ids,
                run_id=answer.run_id,
            )
        return _json(data)

    @app.post("/v1/chat/completions", tags=["openai"], response_model=None)
    async def chat(body: ChatBody, user: Principal = Depends(principal)) -> Response:  # noqa: B008
        question = body.question()
        state.check_question(question, None)
        profile = body.model if body.model in service.rag.profiles else None
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        if body.stream:
            return await _stream(
                state, question, user, profile, None, lambda events: _sse_chat(events, body.model, include_usage)
            )

        def work() -> tuple[Any, bytes]:
            answer = service.ask(question, user, profile=profile)
            return answer, b"" if answer.refused else _dumps(_chat_completion(answer, body.model))

        try:
            answer, data = await state.run(work)
        except Exception as exc:
            raise _error_from(exc) from None
        state.metrics.answer(answer)
        if answer.refused:
            raise ApiError(403, answer.reason or answer.answer, refused=True, decision_ids=answer.decision_ids)
        return _json(data)

    @app.post("/v1/feedback", tags=["rag"])
    async def feedback(body: FeedbackBody, user: Principal = Depends(principal)) -> JSONResponse:  # noqa: B008
        try:
            out = await state.run(lambda: service.feedback(body.run_id, body.rating, body.comment, user.id))
        except Exception as exc:
            err = _error_from(exc)
            if "no run" in err.detail:
                err = ApiError(404, err.detail)
            raise err from None
        return JSONResponse(out)

    # ----- admin -------------------------------------------------------------------------------------
    @app.post("/v1/admin/reload", tags=["admin"])
    async def reload(user: Principal = Depends(admin)) -> JSONResponse:  # noqa: B008
        old = service.rag.policy.bundle_revision
        try:
            out = await state.run(service.reload_policies)
        except (PolicyError, SpecError) as exc:
            detail = str(exc).splitlines()[0]
            return JSONResponse(
                {
                    "reloaded": False,
                    "detail": f"the bundle did not load; still serving {old[:12]}: {detail}",
                    "revision": old,
                },
                status_code=422,
            )
        except Exception as exc:
            raise _error_from(exc) from None
        return JSONResponse(out)

    @app.post("/v1/admin/ingest", tags=["admin"], status_code=202)
    async def admin_ingest(user: Principal = Depends(admin)) -> JSONResponse:  # noqa: B008
        """Start an incremental ingest in the background: 202 with the job id; poll ``status_url``."""
        record = state.jobs.start(user.id)
        return JSONResponse(record, status_code=202, headers={"Location": record["status_url"]})

    @app.get("/v1/admin/ingest/{job_id}", tags=["admin"])
    async def admin_ingest_status(job_id: str, user: Principal = Depends(admin)) -> JSONResponse:  # noqa: B008
        """An ingest job: ``running``, ``succeeded`` (with the ingest summary and run id), ``failed`` (with the
        reason) or ``interrupted`` (its process ended first)."""
        return JSONResponse(state.jobs.get(job_id))

    return app


def _shutdown(state: ServerState) -> None:
    from ragconf.tracking import flush

    state.pool.shutdown(wait=True, cancel_futures=True)
    state.jobs.join()
    flush()
    state.service.close()


def _version() -> str:
    from ragconf import __version__

    return __version__


# ----- streaming ------------------------------------------------------------------------------------
async def _stream(
    state: ServerState,
    question: str,
    user: Principal,
    profile: str | None,
    top_k: int | None,
    render: Callable[[AsyncIterator[tuple[str, Any]]], AsyncIterator[bytes]],
) -> Response:
    """Run a streaming ask in the pool. Until the first event arrives the outcome can still be an HTTP error
    (401/403/refusal/504); after that, errors become an ``error`` event."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def on_event(name: str, data: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (name, data))

    fut = state.submit(lambda: state.service.ask(question, user, profile=profile, top_k=top_k, on_event=on_event))
    fut.add_done_callback(lambda f: queue.put_nowait(("_done", f)))
    deadline = loop.time() + state.spec.request_timeout_s

    async def next_item() -> tuple[str, Any]:
        try:
            return await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            limit = state.spec.request_timeout_s
            raise ApiError(504, f"the request took longer than serve.request_timeout_s={limit:g}s") from None

    first = await next_item()
    if first[0] == "_done":
        exc = first[1].exception()
        if exc is not None:
            raise _error_from(exc)
        answer = first[1].result()
        state.metrics.answer(answer)
        if answer.refused:
            raise ApiError(403, answer.reason or answer.answer, refused=True, decision_ids=answer.decision_ids)

    async def events() -> AsyncIterator[tuple[str, Any]]:
        item = first
        while True:
            if item[0] == "_done":
                exc = item[1].exception()
                if exc is not None:
                    err = _error_from(exc)
                    yield "error", {"status": err.status, "detail": err.detail}
                else:
                    answer = item[1].result()
                    if item is not first:
                        state.metrics.answer(answer)
                    yield "final", answer
                return
            yield item
            try:
                item = await next_item()
            except ApiError as err:
                yield "error", {"status": err.status, "detail": err.detail}
                return

    return StreamingResponse(render(events()), media_type="text/event-stream", headers=SSE_HEADERS)


def _sse(event: str | None, data: Any) -> bytes:
    return format_sse_event(event=event, data_str=json.dumps(data, default=str, separators=(",", ":")))


async def _sse_ask(events: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[bytes]:
    """``/v1/ask`` stream: ``documents``, ``delta``..., then ``final`` (or ``error``)."""
    async for name, data in events:
        yield _sse(name, _final_event(data) if name == "final" else data)


def _sources(answer: Any) -> str:
    if not answer.citations:
        return ""
    lines = [f"[{c['n']}] {c.get('title') or c.get('doc_id')} ({c.get('doc_id')})" for c in answer.citations]
    return "\n\nSources:\n" + "\n".join(lines)


def _ragconf_extra(answer: Any) -> dict[str, Any]:
    return {
        "run_id": answer.run_id,
        "decision_ids": answer.decision_ids,
        "route": answer.route,
        "documents": [d["chunk_id"] for d in answer.documents],
        "redacted": answer.redacted,
    }


def _usage(answer: Any) -> dict[str, int]:
    p, c = int(answer.usage.get("prompt_tokens", 0)), int(answer.usage.get("completion_tokens", 0))
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _chat_completion(answer: Any, model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{answer.run_id or uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.answer + _sources(answer)},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(answer),
        "citations": answer.citations,
        "ragconf": _ragconf_extra(answer),
    }


async def _sse_chat(events: AsyncIterator[tuple[str, Any]], model: str, include_usage: bool) -> AsyncIterator[bytes]:
    """OpenAI ``chat.completion.chunk`` stream; the last chunk carries ``citations`` and ``ragconf`` extras."""
    cid = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return _sse(None, body)

    yield chunk({"role": "assistant", "content": ""})
    async for name, data in events:
        if name == "delta":
            yield chunk({"content": data["text"]})
        elif name == "final":
            tail = ""
            if data.answer == NO_CITED_ANSWER:
                tail += "\n\n" + NO_CITED_ANSWER
            tail += _sources(data)
            if tail:
                yield chunk({"content": tail})
            yield chunk({}, "stop", citations=data.citations, ragconf=_ragconf_extra(data))
            if include_usage:
                body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
                yield _sse(None, {**body, "choices": [], "usage": _usage(data)})
        elif name == "error":
            yield _sse(None, {"error": {"message": data["detail"], "code": data["status"]}})
    yield format_sse_event(data_str="[DONE]")
