"""The ragconf command line (Typer). User mistakes exit 2 with one clear message, never a traceback."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer

from ragconf.errors import RagconfError

__all__ = ["app", "main"]

app = typer.Typer(
    name="ragconf",
    help="Declarative, governed, reproducible RAG on Haystack. Any config key is overridable as key=value.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
policy_app = typer.Typer(help="Test and evaluate the Rego policies.", no_args_is_help=True)
runs_app = typer.Typer(help="List, compare and reproduce tracked runs.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(runs_app, name="runs")

F = TypeVar("F", bound=Callable[..., Any])

ConfigDir = Annotated[
    Path | None,
    typer.Option(
        "--config-dir", "-c", help="Your config folder (config.yaml + groups); built-ins stay on the search path."
    ),
]
Overrides = Annotated[list[str] | None, typer.Argument(help="Config overrides, Hydra syntax: key=value, group=option")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def _err(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)


def _warn(msg: str) -> None:
    typer.secho(f"warning: {msg}", fg=typer.colors.YELLOW, err=True)


def handle_errors(fn: F) -> F:
    """Turn ragconf errors into one message and an exit code; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RagconfError as exc:
            if os.environ.get("RAGCONF_DEBUG"):
                import traceback

                traceback.print_exc()
            _err(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _err("interrupted; everything committed so far is kept, re-run to continue")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, click.ClickException):
            raise  # click prints these itself
        except Exception as exc:  # a bug, not a user mistake: one line, the traceback on request
            if os.environ.get("RAGCONF_DEBUG"):
                import traceback

                traceback.print_exc()
            detail = " ".join(str(exc).split())[:500]
            _err(
                f"internal error: {type(exc).__name__}: {detail} (set RAGCONF_DEBUG=1 for a traceback)"
                if detail
                else f"internal error: {type(exc).__name__} (set RAGCONF_DEBUG=1 for a traceback)"
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _load(config_dir: Path | None, overrides: list[str] | None) -> Any:
    from ragconf.spec import load_config

    return load_config(config_dir, overrides or [])


def _app(config_dir: Path | None, overrides: list[str] | None) -> Any:
    from ragconf.runtime import RagApp

    return RagApp(_load(config_dir, overrides), config_dir=config_dir)


def _service(config_dir: Path | None, overrides: list[str] | None) -> Any:
    from ragconf.service import RagService

    return RagService(_app(config_dir, overrides), source="cli")


def _emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@app.command()
@handle_errors
def validate(overrides: Overrides = None, config_dir: ConfigDir = None, as_json: JsonFlag = False) -> None:
    """Compose and validate the config, build every pipeline and load the policies."""
    rag = _app(config_dir, overrides)
    stages = {"pipeline": rag.retrieval.name}
    for name in rag.profiles:
        rag.generation(name)
    stages["generators"] = ", ".join(rag.profiles)
    from ragconf.ingest.pipeline import build_indexing

    indexing = build_indexing(rag.spec.corpus, source_of=rag.loaded.source_of)
    revision = rag.policy.bundle_revision
    users = rag.directory.ids()
    from ragconf.policy.consistency import check_configured

    visibility = check_configured(rag.spec, rag.policy.engine)
    result = {
        "valid": visibility.ok,
        "visibility": visibility.to_dict(),
        "config_hash": rag.loaded.hash,
        "choices": rag.loaded.choices,
        "pipeline": rag.retrieval.name,
        "generators": list(rag.profiles),
        "indexing": {"declared": indexing.declared, "components": list(indexing.spec.components)},
        "policy_revision": revision,
        "users": users,
    }
    if as_json:
        _emit(result)
    else:
        typer.echo(f"config ok  (hash {rag.loaded.hash[:12]})")
        typer.echo(f"  groups:    {', '.join(f'{k}={v}' for k, v in sorted(rag.loaded.choices.items()))}")
        typer.echo(f"  pipeline:  {rag.retrieval.name} ({len(rag.spec.pipeline.components)} components + access guard)")
        typer.echo(f"  profiles:  {stages['generators']}")
        kind = "declared" if indexing.declared else "default"
        typer.echo(f"  indexing:  {kind}: {' -> '.join(indexing.spec.components)} -> ragconf writer")
        typer.echo(f"  policies:  revision {revision[:12]}")
        typer.echo(f"  users:     {', '.join(users) or '(none)'}")
        _print_visibility(visibility, indent="  ")
    rag.close()
    if not visibility.ok:
        _err("the access policy's filter and allow disagree (see the counterexamples above)")
        raise typer.Exit(2)


def _print_visibility(report: Any, indent: str = "") -> None:
    """The filter/allow consistency line, and counterexamples when they disagree."""
    typer.echo(indent + report.summary())
    for n, example in enumerate(report.counterexamples, 1):
        typer.echo(f"{indent}counterexample {n}:")
        for line in example.lines():
            typer.echo(indent + line)


def _progress(enabled: bool) -> Any:
    if not enabled:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(
        TextColumn("ingest"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=__import__("rich.console").console.Console(stderr=True),
    )
    task = prog.add_task("ingest", total=None)

    def update(done: int, total: int) -> None:
        prog.update(task, completed=done, total=total)

    return prog, update


@app.command()
@handle_errors
def ingest(
    overrides: Overrides = None,
    config_dir: ConfigDir = None,
    as_json: JsonFlag = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when anything was quarantined or withdrawn, not only on errors.")
    ] = False,
) -> None:
    """Read the corpus sources, chunk, embed and write to the store (incremental and idempotent).

    Deleted sources are removed and documents whose new version is invalid are withdrawn before anything is
    written; documents without access metadata are quarantined unless the corpus declares defaults."""
    svc = _service(config_dir, overrides)
    rag = svc.rag
    show = not as_json and sys.stderr.isatty()
    prog, update = _progress(show)
    try:
        if prog is not None:
            with prog:
                result = svc.ingest(progress=update)
        else:
            result = svc.ingest(progress=None if as_json else _plain_progress)
    finally:
        svc.close()
    summary = result.summary
    data = result.to_dict()
    if as_json:
        _emit(data)
    else:
        typer.echo(summary.line(rag.spec.corpus.name))
        for err in data.get("errors") or []:
            typer.secho(f"  rejected {err}", fg=typer.colors.YELLOW, err=True)
        for item in data.get("quarantined") or []:
            typer.secho(f"  quarantined {item}", fg=typer.colors.YELLOW, err=True)
        for doc_id in data.get("withdrawn") or []:
            typer.secho(f"  withdrawn {doc_id} (its new version was not indexed; the old one was removed)", err=True)
    if data.get("errors") or (strict and (data.get("quarantined") or data.get("withdrawn"))):
        raise typer.Exit(1)


def _plain_progress(done: int, total: int) -> None:
    if total and (done == total or done % max(1, total // 10) == 0):
        typer.echo(f"  {done}/{total} documents", err=True)


@app.command()
@handle_errors
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    overrides: Overrides = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="User id from the identity config.")] = None,
    config_dir: ConfigDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Answer a question with numbered citations, as USER (documents the policy denies are never used)."""
    svc = _service(config_dir, overrides)
    rag = svc.rag
    try:
        answer = svc.ask(question, user)
        if not answer.documents and rag.store.count_documents() == 0:
            where = rag.spec.store.model_dump().get("path") or rag.spec.store.type
            _warn(f"the store at {where} is empty: run `ragconf ingest` first (with the same overrides)")
    finally:
        svc.close()
    if as_json:
        _emit(answer.to_dict())
        return
    typer.echo(answer.answer)
    if answer.citations:
        typer.echo("")
        for c in answer.citations:
            typer.echo(
                f"[{c['n']}] {c.get('source') or c.get('doc_id')}  (doc {c['doc_id']}, chunk {c['chunk_id'][:12]})"
            )
    if answer.refused:
        raise typer.Exit(3)


@app.command()
@handle_errors
def serve(
    overrides: Overrides = None,
    config_dir: ConfigDir = None,
    host: Annotated[str | None, typer.Option("--host", help="Bind address (default serve.host).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default serve.port).")] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Processes, each its own app (default serve.workers).")
    ] = None,
) -> None:
    """Serve the configured app over HTTP (ragconf[serve]): authenticated ask/retrieve/chat, SSE streaming."""
    from ragconf.server import _require, limit_native_threads

    _require()
    limit_native_threads()  # before numpy loads: one BLAS/OpenMP thread per process unless the env says otherwise
    svc = _service(config_dir, overrides)
    svc.source = "server"
    from ragconf.server import run as run_server
    from ragconf.server.auth import Authenticator, describe

    if not Authenticator(svc.spec.serve.auth, svc.rag.directory).configured:
        _warn("no API keys or JWT configured (serve.auth): every request will be refused with 401")
    typer.echo(f"ragconf serve: auth {describe(svc.spec.serve.auth)}; config hash {svc.rag.loaded.hash[:12]}", err=True)
    run_server(svc, config_dir=config_dir, overrides=overrides, host=host, port=port, workers=workers)


@app.command()
@handle_errors
def export(
    overrides: Overrides = None,
    config_dir: ConfigDir = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (one YAML file per stage).")] = Path(
        "ragconf-export"
    ),
) -> None:
    """Write each stage as Haystack YAML that plain `haystack.Pipeline.loads` loads back (see docs/onboarding.md):
    retrieval.yaml, generator-<profile>.yaml and stages.json (inputs and outputs of each)."""
    from ragconf.export import export_stages

    rag = _app(config_dir, overrides)
    try:
        written = export_stages(rag, out)
    finally:
        rag.close()
    for path in written:
        typer.echo(str(path))


@app.command()
@handle_errors
def components(as_json: JsonFlag = False) -> None:
    """List the component aliases YAML may use."""
    from ragconf.ingest.pipeline import indexing_registry

    entries = indexing_registry().entries()  # query aliases and the indexing ones (corpus.indexing)
    if as_json:  # each alias with its parameters (types, defaults) and sockets
        _emit([e.describe() for e in entries])
        return
    for e in entries:
        typer.echo(f"{e.alias:22} {e.kind:14} {e.description}")
    typer.echo("(Haystack components may also be named by class path under haystack.components.*)", err=True)


@app.command()
@handle_errors
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to write (created if missing).")] = Path("ragconf-team"),
    name: Annotated[str | None, typer.Option("--name", help="Project and corpus name (default: folder name).")] = None,
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant of the documents and users.")] = "acme",
    force: Annotated[bool, typer.Option("--force", help="Overwrite files init writes.")] = False,
) -> None:
    """Write a working, commented team config folder: corpus, pipeline, generators, users, policies, eval stub."""
    from ragconf.scaffold import init_project

    written = init_project(directory, name=name, tenant=tenant, force=force)
    typer.echo(f"wrote {len(written)} files into {directory}")
    typer.echo(f"next: put documents into {directory}/docs, then")
    typer.echo(f"  ragconf validate --config-dir {directory}")
    typer.echo(f"  ragconf ingest --config-dir {directory}")
    typer.echo(f'  ragconf ask "How do I reset my password?" --user lead --config-dir {directory}')


@app.command()
@handle_errors
def schema(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")] = None,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Write one schema per file kind (config.yaml and each group) into this folder."),
    ] = None,
) -> None:
    """Print the JSON Schema of a composed config, or (--dir) one schema per file a team edits: config.yaml
    and each group's option files (corpus/*.yaml, pipeline/*.yaml, ...), for editor completion."""
    from ragconf.scaffold import write_schema, write_schemas

    if directory is not None:
        for path in write_schemas(directory):
            typer.echo(f"wrote {path}", err=True)
        return
    text = write_schema(out)
    if out:
        typer.echo(f"wrote {out}", err=True)
    else:
        sys.stdout.write(text)


@app.command("eval")
@handle_errors
def eval_cmd(
    overrides: Overrides = None,
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="Evaluate as this user (default: eval.user).")
    ] = None,
    multirun: Annotated[bool, typer.Option("--multirun", "-m", help="Sweep: k=a,b,c runs each combination.")] = False,
    explain: Annotated[
        bool, typer.Option("--explain", help="Classify every query below --threshold (nDCG@10): why it failed.")
    ] = False,
    threshold: Annotated[float, typer.Option("--threshold", min=0.0, max=1.0, help="nDCG@10 for --explain.")] = 0.5,
    config_dir: ConfigDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Run the evaluation set, report metrics and leakage, and fail (exit 4) when a gate fails."""
    from ragconf.spec import expand_sweep

    combos = expand_sweep(list(overrides or [])) if multirun else [list(overrides or [])]
    results = []
    parent = None
    sweep_status = "FAILED"  # a child that raises fails the sweep's parent run
    if multirun and len(combos) > 1:
        parent = _service(config_dir, combos[0]).start_sweep(list(overrides or []))
    try:
        for combo in combos:
            svc = _service(config_dir, combo)
            try:
                result = svc.evaluate(
                    user=user,
                    progress=None if as_json else _plain_progress_queries,
                    parent_run_id=getattr(parent, "run_id", None),
                    explain=threshold if explain else None,
                )
            finally:
                svc.close()
            results.append((combo, result))
        sweep_status = "FINISHED"
    finally:
        if parent is not None:
            from ragconf.eval.report import log_sweep

            log_sweep(parent, results)  # each metric vs the swept value, as plots and a table on the parent
            parent.close(sweep_status)
    failed = [r for _, r in results if not r.passed]
    if as_json:
        out = [dict(r.to_dict(), overrides=c) for c, r in results]
        _emit(out[0] if len(out) == 1 else {"runs": out, "parent_run_id": getattr(parent, "run_id", None)})
    else:
        for combo, r in results:
            if len(results) > 1:
                typer.echo(f"== {' '.join(combo)}")
            _print_eval(r)
            if r.explanation is not None:
                from ragconf.eval.explain import format_explanation

                typer.echo("\n".join(format_explanation(r.explanation)))
    if failed:
        raise typer.Exit(4)


@app.command()
@handle_errors
def tune(
    overrides: Overrides = None,
    split: Annotated[str, typer.Option("--split", help="Qrels split to fit on (never the one you report).")] = "train",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Pipeline YAML to write (default: tuned/pipeline/<name>_tuned.yaml)."),
    ] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Tune as this user (default: eval.user).")] = None,
    adapter: Annotated[
        bool,
        typer.Option(
            "--adapter",
            help="Also fit a query adapter (a linear map of query embeddings) on the training qrels; writes "
            "tuned/adapters/<name>.npz and a pipeline that uses it.",
        ),
    ] = False,
    config_dir: ConfigDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Fit the hybrid fusion weights and candidate depth (and with --adapter a query adapter) on an eval set's
    training qrels; write the tuned pipeline and log a `tune` run."""
    from ragconf.tune import tune as run_tune
    from ragconf.tune import tune_adapter

    svc = _service(config_dir, overrides)
    try:
        name = svc.rag.spec.pipeline.name
        progress = None if as_json else _plain_progress_queries
        if adapter:
            out = output or Path("tuned") / "pipeline" / f"{name}_adapted.yaml"
            result = tune_adapter(svc, split=split, user=user, output=out, progress=progress)
        else:
            out = output or Path("tuned") / "pipeline" / f"{name}_tuned.yaml"
            result = run_tune(svc, split=split, user=user, output=out, progress=progress)
    finally:
        svc.close()
    if as_json:
        _emit(result.to_dict())
        return
    what = "held-out nDCG@10" if adapter else "nDCG@10"
    extra = f", adapter after {result.best['steps']} steps" if adapter else ""
    typer.echo(
        f"tuned {result.pipeline}.{result.component} on {result.queries} {result.split} queries: "
        f"{what} {result.default_ndcg:.4f} -> {result.best_ndcg:.4f} with bm25 weight "
        f"{result.best['bm25_weight']}, candidates {result.best['candidates']}{extra}"
        + (f"  (run {result.run_id})" if result.run_id else "")
    )
    written = Path(str(result.output))
    typer.echo(f"wrote {written}: use --config-dir {written.parent.parent} pipeline={written.stem}")


def _plain_progress_queries(done: int, total: int) -> None:
    if total and (done == total or done % max(1, total // 5) == 0):
        typer.echo(f"  {done}/{total} queries", err=True)


def _print_eval(r: Any) -> None:
    typer.echo(f"evaluated {r.queries} queries as '{r.user}'" + (f"  (run {r.run_id})" if r.run_id else ""))
    for k in sorted(r.metrics):
        typer.echo(f"  {k:20} {r.metrics[k]:.4f}")
    for persona, vals in sorted(r.per_persona.items()):
        typer.echo(f"  leakage[{persona}] = {int(vals['leakage'])}")
    for g in r.gates:
        mark = "PASS" if g.passed else "FAIL"
        detail = "" if g.passed else f"  (off by {abs(g.margin):.4f})"
        typer.echo(f"  gate {mark}: {g.gate}  value {g.value:.4f}{detail}")


@policy_app.command("test")
@handle_errors
def policy_test(
    overrides: Overrides = None,
    config_dir: ConfigDir = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    cases: Annotated[
        int, typer.Option("--cases", min=0, help="Principal x document cases of the filter/allow check (0: skip).")
    ] = 6000,
) -> None:
    """Run every *_test.rego of the bundle through the configured engine, then check that the access
    policy's filter (as the store evaluates it) and allow agree on generated principals x documents."""
    from ragconf.policy import load_engine, run_policy_tests
    from ragconf.policy.consistency import check_configured

    spec = _load(config_dir, overrides).spec
    report = run_policy_tests(Path(spec.policy.bundle), load_engine(spec.policy.model_dump(), tests=True))
    for item in report.results:
        if verbose or not item.passed:
            typer.echo(f"{'PASS' if item.passed else 'FAIL'} {item.name}" + (f": {item.error}" if item.error else ""))
    typer.echo(f"{report.passed} passed, {report.failed} failed")
    visibility_ok = True
    if cases:
        visibility = check_configured(spec, load_engine(spec.policy.model_dump()), max_cases=cases)
        _print_visibility(visibility)
        visibility_ok = visibility.ok
    if report.failed or report.passed == 0 or not visibility_ok:
        if report.passed == 0 and report.failed == 0:
            _err(f"no tests found in {spec.policy.bundle} (files named *_test.rego with rules test_*)")
        raise typer.Exit(1)


@policy_app.command("eval")
@handle_errors
def policy_eval(
    package: Annotated[str, typer.Argument(help="Rule path, e.g. ragconf.access.filter or ragconf/routing/decision")],
    input_file: Annotated[Path, typer.Option("--input", "-i", help="JSON or YAML input document.")],
    overrides: Overrides = None,
    config_dir: ConfigDir = None,
) -> None:
    """Evaluate one decision and print it as JSON (undefined prints null and exits 3)."""
    from ragconf.errors import SpecError
    from ragconf.policy import load_engine
    from ragconf.yamlsafe import safe_load_file

    spec = _load(config_dir, overrides).spec
    if not input_file.is_file():
        raise SpecError(f"input file '{input_file}' does not exist", key="--input")
    data = safe_load_file(input_file)  # bounded (alias bombs), non-UTF-8 and parse errors are one SpecError line
    engine = load_engine(spec.policy.model_dump())
    value = engine.evaluate(package.replace(".", "/"), data)
    _emit(value)
    if value is None:
        raise typer.Exit(3)


@policy_app.command("explain")
@handle_errors
def policy_explain(
    user: Annotated[str, typer.Option("--user", "-u", help="User id from the identity config.")],
    doc: Annotated[str, typer.Option("--doc", "-d", help="Document id (citations[].doc_id of `ask --json`).")],
    query: Annotated[str | None, typer.Option("--query", "-q", help="The question, as the request sees it.")] = None,
    overrides: Overrides = None,
    config_dir: ConfigDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Why USER can or cannot see DOC: the filter decision, the per-document decision, the condition that
    denied it (tenant, clearance, groups or a custom rule) and the decision ids."""
    from ragconf.policy.explain import explain_document

    rag = _app(config_dir, overrides)
    try:
        result = explain_document(
            rag.policy, rag.store, rag.principal(user), doc, query=query, corpus=rag.spec.corpus.name
        )
    finally:
        rag.close()
    if as_json:
        _emit(result.to_dict())
    else:
        for line in result.lines():
            typer.echo(line)


@app.command("audit")
@handle_errors
def audit_cmd(
    user: Annotated[str | None, typer.Option("--user", "-u", help="Decisions about this principal.")] = None,
    doc: Annotated[
        str | None, typer.Option("--doc", "-d", help="Decisions that allowed or denied this document (or chunk id).")
    ] = None,
    decision: Annotated[str | None, typer.Option("--decision", help="One decision id (a prefix is enough).")] = None,
    run: Annotated[str | None, typer.Option("--run", help="Decisions of this run id.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="Newest N records (0: all).")] = 50,
    overrides: Overrides = None,
    config_dir: ConfigDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Query the policy audit log, rotated files included."""
    from ragconf.errors import SpecError
    from ragconf.policy.audit import query_audit

    if not any((user, doc, decision, run)):
        raise SpecError("say which decisions to show", key="audit", hint="--user U, --doc D, --decision ID or --run R")
    loaded = _load(config_dir, overrides)
    audit = loaded.spec.policy.audit
    if audit.sink == "none":
        raise SpecError("the audit log is off (sink: none): nothing to query", key="policy.audit.sink")
    path = Path(audit.path or Path(loaded.spec.project.workdir) / "audit.jsonl")
    chunk_ids: set[str] | None = None
    if doc:
        from ragconf.policy.explain import doc_chunks

        chunk_ids = {doc}
        rag = _app(config_dir, overrides)
        try:
            chunk_ids |= {str(c.id) for c in doc_chunks(rag.store, doc, rag.spec.corpus.name)}
        except SpecError:
            pass  # not (or no longer) in the store: match it as a chunk id
        finally:
            rag.close()
    rows = query_audit(path, user=user, chunk_ids=chunk_ids, decision=decision, run=run)
    if limit:
        rows = rows[-limit:]
    if as_json:
        _emit(rows)
        return
    if not rows:
        typer.echo(f"no matching decisions in {path} (and its rotated files)", err=True)
    for r in rows:
        what = f"result={json.dumps(r.get('result'), default=str)[:80]}"
        if "allowed" in r:
            what = f"allowed {r.get('allowed')}, denied {r.get('denied')}"
            if chunk_ids:
                hit_ok = chunk_ids & set(r.get("allowed_ids") or [])
                hit_no = chunk_ids & set(r.get("denied_ids") or [])
                what += f"; this document: {len(hit_ok)} chunks allowed, {len(hit_no)} denied"
        if r.get("error"):
            what = f"ERROR {r['error']}"
        run_tag = f"  run {r['run_id']}" if r.get("run_id") else ""
        typer.echo(
            f"{r.get('time', '')}  {r.get('decision_id', '')}  {r.get('principal')}  "
            f"{r.get('policy', '')}.{r.get('rule', '')}  {what}{run_tag}"
        )


@runs_app.command("list")
@handle_errors
def runs_list(
    overrides: Overrides = None,
    config_dir: ConfigDir = None,
    as_json: JsonFlag = False,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
    pipeline: Annotated[str | None, typer.Option("--pipeline", help="Only runs of this pipeline name.")] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="ask, retrieve, ingest, eval or sweep.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="30m, 2h, 7d or a date (2026-11-25).")] = None,
) -> None:
    """Recent runs of every pipeline in the tracking store (filter with --pipeline, --kind, --since)."""
    from ragconf.tracking import list_runs

    rag = _app(config_dir, overrides)
    rows = list_runs(_tracking_cfg(rag), max_results=limit, pipeline=pipeline, kind=kind, since=since)
    if as_json:
        _emit(rows)
        return
    if not rows:
        typer.echo("no runs match (ingest, ask and eval log runs when tracking is on)", err=True)
    key_metrics = ("ndcg_10", "recall_100", "mrr_10", "leakage", "p95_ms", "total_ms", "chunks_total")
    for r in rows:
        m = r.get("metrics") or {}
        shown = [k for k in key_metrics if k in m] or sorted(m)[:4]
        metrics = ", ".join(f"{k}={m[k]:.4g}" for k in shown[:4])
        child = f"  (child of {r['parent_run_id'][:8]})" if r.get("parent_run_id") else ""
        where = f"{r.get('pipeline') or '-':12}"
        typer.echo(f"{r['run_id']}  {r.get('kind', ''):7} {where} {r.get('start_time', '')}  {metrics}{child}")


@runs_app.command("compare")
@handle_errors
def runs_compare(
    run_a: str, run_b: str, overrides: Overrides = None, config_dir: ConfigDir = None, as_json: JsonFlag = False
) -> None:
    """Config diff (dotted keys), model/policy/index changes and metric deltas of two runs."""
    from ragconf.tracking import compare_runs, format_comparison

    rag = _app(config_dir, overrides)
    cmp = compare_runs(_tracking_cfg(rag), run_a, run_b)
    if as_json:
        _emit(cmp)
    else:
        typer.echo(format_comparison(cmp))


@runs_app.command("reproduce")
@handle_errors
def runs_reproduce(
    run_id: str, overrides: Overrides = None, config_dir: ConfigDir = None, as_json: JsonFlag = False
) -> None:
    """Re-run an eval run with its exact logged config and report whether the metrics match."""
    svc = _service(config_dir, overrides)
    report = svc.reproduce(run_id)
    if as_json:
        _emit(report)
    else:
        typer.echo(
            f"reproduced {run_id} as {report['new_run_id']}: "
            + ("metrics match" if report["match"] else "METRICS DIFFER")
        )
        for k, (a, b) in sorted(report["metrics"].items()):
            typer.echo(f"  {k:20} {_fmt_metric(a)} -> {_fmt_metric(b)}" + ("" if a == b else "  *"))
    if not report["match"]:
        raise typer.Exit(1)


def _fmt_metric(value: Any) -> str:
    return f"{value:.6f}" if isinstance(value, (int, float)) else "missing"


def _tracking_cfg(rag: Any) -> dict[str, Any]:
    cfg = rag.spec.tracking.model_dump()
    cfg["workdir"] = str(rag.workdir)
    return cfg


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
