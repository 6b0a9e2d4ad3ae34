"""Building Haystack pipelines from stage specs: static checks name the key, the file and valid options."""

from __future__ import annotations

from typing import Any

import pytest

from ragconf.compile import BuildContext, build_stage
from ragconf.errors import CompileError, RegistryError
from ragconf.registry import ComponentEntry, Registry, default_registry
from ragconf.spec.models import StageSpec


def stage(**kw: Any) -> StageSpec:
    base: dict[str, Any] = {
        "name": "t",
        "components": {"join": {"type": "rrf_joiner", "params": {"top_k": 3}}},
        "inputs": {"documents": ["join.documents"]},
        "output": "join.documents",
    }
    base.update(kw)
    return StageSpec.model_validate(base)


def ctx() -> BuildContext:
    return BuildContext(source_of=lambda key: "stage.yaml")


def test_builds_real_haystack_pipeline_and_runs_it() -> None:
    from haystack import Document, Pipeline

    built = build_stage(stage(), "pipeline", ctx())
    assert isinstance(built.pipeline, Pipeline)
    docs = [Document(id="a", content="a"), Document(id="b", content="b")]
    out, _ = built.run({"documents": docs})
    assert {d.id for d in out} == {"a", "b"}
    assert "DocumentJoiner" in built.pipeline.dumps()


def test_unknown_alias_suggests_closest() -> None:
    with pytest.raises(RegistryError) as info:
        build_stage(stage(components={"join": {"type": "rrf_joinr"}}), "pipeline", ctx())
    assert info.value.key == "pipeline.components.join.type"
    assert "did you mean 'rrf_joiner'" in str(info.value)
    assert info.value.source == "stage.yaml"


def test_unknown_param_lists_constructor_params() -> None:
    with pytest.raises(CompileError) as info:
        build_stage(stage(components={"join": {"type": "rrf_joiner", "params": {"topk": 3}}}), "pipeline", ctx())
    assert info.value.key == "pipeline.components.join.params.topk"
    assert "did you mean 'top_k'" in str(info.value)


def test_wrong_param_type_is_caught_before_building() -> None:
    with pytest.raises(CompileError) as info:
        build_stage(stage(components={"join": {"type": "rrf_joiner", "params": {"top_k": "many"}}}), "pipeline", ctx())
    assert info.value.key == "pipeline.components.join.params.top_k"


def test_bad_connection_names_sockets() -> None:
    spec = stage(
        components={"a": {"type": "rrf_joiner"}, "b": {"type": "rrf_joiner"}},
        connections=[{"sender": "a.docs", "receiver": "b.documents"}],
        inputs={"documents": ["a.documents"]},
        output="b.documents",
    )
    with pytest.raises(CompileError) as info:
        build_stage(spec, "pipeline", ctx())
    assert info.value.key == "pipeline.connections[0].sender"
    assert "did you mean 'documents'" in str(info.value)


def test_connection_to_unknown_component() -> None:
    spec = stage(connections=[{"sender": "join.documents", "receiver": "nope.documents"}])
    with pytest.raises(CompileError, match="no component named 'nope'"):
        build_stage(spec, "pipeline", ctx())


def test_bad_output_and_input_refs() -> None:
    with pytest.raises(CompileError) as info:
        build_stage(stage(output="join.answers"), "pipeline", ctx())
    assert info.value.key == "pipeline.output"
    with pytest.raises(CompileError) as info:
        build_stage(stage(inputs={"query": ["join.query"]}), "pipeline", ctx())
    assert info.value.key == "pipeline.inputs.query[0]"


def test_reserved_guard_name_rejected() -> None:
    with pytest.raises(CompileError, match="reserved"):
        build_stage(
            stage(components={"access_guard": {"type": "rrf_joiner"}}, output="access_guard.documents", inputs={}),
            "pipeline",
            ctx(),
        )


def test_guard_is_appended_and_fails_closed_without_policy() -> None:
    from haystack import Document

    built = build_stage(stage(), "pipeline", ctx(), guard=True)
    assert built.output == ("access_guard", "documents")
    out, _ = built.run({"documents": [Document(content="x")]}, extra={"access_guard": {"principal": None}})
    assert out == []


def test_registry_lists_builtins_and_plugins_cannot_shadow() -> None:
    reg = default_registry()
    aliases = reg.aliases()
    for alias in ("bm25_retriever", "embedding_retriever", "rrf_joiner", "prompt_builder", "extractive_answer"):
        assert alias in aliases
    custom = Registry([ComponentEntry("mine", "haystack.components.joiners:DocumentJoiner")], load_plugins=False)
    assert custom.get("mine").init_params() is not None


def test_missing_optional_dependency_gives_install_hint() -> None:
    reg = Registry([ComponentEntry("x", "no_such_pkg_ragconf.mod:Thing", extra="llama")], load_plugins=False)
    with pytest.raises(RegistryError, match=r"pip install 'ragconf\[llama\]'"):
        reg.get("x").load()


# ----- errors raised inside components (Haystack wraps them in PipelineRuntimeError) ------------------------------
def _failing_stage(exc: BaseException, *, retriever: bool = False) -> Any:
    from haystack import Document, Pipeline, component

    from ragconf.compile import BuiltStage

    @component
    class Boom:
        @component.output_types(documents=list[Document])
        def run(self, documents: list[Document]) -> dict[str, Any]:
            raise exc

    pipe = Pipeline()
    pipe.add_component("boom", Boom())
    return BuiltStage(
        "t", pipe, {"documents": [("boom", "documents")]}, ("boom", "documents"), ["boom"] if retriever else [], False
    )


@pytest.mark.parametrize(
    "exc",
    [
        CompileError("bad thing", key="pipeline.components.boom"),
        __import__("ragconf.errors", fromlist=["PolicyError"]).PolicyError("policy failed to evaluate"),
        __import__("ragconf.errors", fromlist=["StoreError"]).StoreError("store is corrupt"),
    ],
)
def test_ragconf_errors_inside_components_surface_as_themselves(exc: Exception) -> None:
    with pytest.raises(type(exc)) as info:
        _failing_stage(exc).run({"documents": []})
    assert info.value is exc
    assert info.value.exit_code == exc.exit_code  # type: ignore[attr-defined]


def test_other_component_errors_become_one_line_naming_the_component() -> None:
    from ragconf.errors import RagconfError, StoreError

    with pytest.raises(RagconfError) as info:
        _failing_stage(ValueError("first line\nsecond line")).run({"documents": []})
    assert type(info.value) is RagconfError and info.value.exit_code == 1
    assert str(info.value) == "component 'boom' of stage 't' failed: ValueError: first line second line"
    with pytest.raises(StoreError, match="component 'boom' of stage 't' failed: OSError: disk I/O error"):
        _failing_stage(OSError("disk I/O error"), retriever=True).run({"documents": []})


def test_component_error_writes_no_pipeline_snapshot(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # a snapshot of a failed run holds its inputs (pre-guard candidates): never written, even when enabled
    monkeypatch.setenv("HAYSTACK_PIPELINE_SNAPSHOT_SAVE_ENABLED", "true")
    monkeypatch.setenv("HOME", str(tmp_path))  # Haystack saves to ~/.haystack/pipeline_snapshot
    monkeypatch.chdir(tmp_path)
    from ragconf.errors import RagconfError

    with pytest.raises(RagconfError):
        _failing_stage(KeyError("x")).run({"documents": []})
    assert list(tmp_path.rglob("*.json")) == []


# ----- components by capability: plugin retrievers, Haystack class paths ------------------------------------

PLUGIN_MODULE = '''
from typing import Any

from haystack import Document, component

SEEN_FILTERS: list[Any] = []


@component
class AcmeRetriever:
    """A third-party retriever: takes a document_store and a filters input, like any Haystack retriever."""

    def __init__(self, document_store: Any, top_k: int = 5) -> None:
        self.document_store = document_store
        self.top_k = top_k

    @component.output_types(documents=list[Document])
    def run(self, query: str, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        SEEN_FILTERS.append(filters)
        return {"documents": self.document_store.bm25_retrieval(query, filters=filters, top_k=self.top_k)}


@component
class BlindRetriever:
    """Reads the store but cannot take a filter: must be rejected."""

    def __init__(self, document_store: Any) -> None:
        self.document_store = document_store

    @component.output_types(documents=list[Document])
    def run(self, query: str) -> dict[str, Any]:
        return {"documents": self.document_store.bm25_retrieval(query, top_k=5)}
'''


@pytest.fixture
def acme_plugin(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An installed plugin distribution registering two aliases through the ragconf.components entry point."""
    import importlib

    site = tmp_path / "site"
    site.mkdir()
    (site / "acme_ragconf_plugin.py").write_text(PLUGIN_MODULE)
    dist = site / "acme_ragconf_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-ragconf-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[ragconf.components]\n"
        "acme_bm25 = acme_ragconf_plugin:AcmeRetriever\n"
        "acme_blind = acme_ragconf_plugin:BlindRetriever\n"
    )
    monkeypatch.syspath_prepend(str(site))
    yield importlib.import_module("acme_ragconf_plugin")
    import sys

    sys.modules.pop("acme_ragconf_plugin", None)


def test_plugin_retriever_gets_the_store_and_the_access_filter(
    acme_plugin: Any, handbook_dir: Any, tmp_path: Any
) -> None:
    """A retriever registered through the entry point (kind 'other') is recognised by capability: the store is
    injected and every run gets the access policy's filter, so carol (contractor) never sees the runbook."""
    from ragconf.runtime import RagApp
    from ragconf.spec import load_config

    team = tmp_path / "team"
    (team / "pipeline").mkdir(parents=True)
    (team / "config.yaml").write_text(
        "defaults:\n  - corpus: handbook\n  - store: sqlite\n  - embedder: minilm\n  - pipeline: acme\n"
        "  - generator: extractive\n  - identity: handbook\n  - policy: default\n  - tracking: disabled\n"
        "  - eval: none\n  - _self_\n"
    )
    (team / "pipeline" / "acme.yaml").write_text(
        "name: acme\ncomponents:\n  acme:\n    type: acme_bm25\n    params: {top_k: 20}\n"
        "inputs:\n  query: [acme.query]\noutput: acme.documents\n"
    )
    assert default_registry().get("acme_bm25").kind == "other"
    rag = RagApp(load_config(team, [f"project.workdir={handbook_dir / '.ragconf'}"]), config_dir=team)
    try:
        assert rag.retrieval.retrievers == ["acme"]
        assert rag.retrieval.pipeline.get_component("acme").document_store is rag.store
        alice, _, _ = rag.retrieve("database failover runbook meal allowance", rag.principal("alice"))
        carol, _, _ = rag.retrieve("database failover runbook meal allowance", rag.principal("carol"))
    finally:
        rag.close()
    assert len(acme_plugin.SEEN_FILTERS) == 2 and all(acme_plugin.SEEN_FILTERS), "the access filter was not fed"
    assert any(d.meta.get("classification") == "confidential" for d in alice)
    assert carol and all(d.meta.get("classification") in (None, "public") for d in carol)


def test_plugin_that_reads_the_store_without_a_filters_input_is_rejected(acme_plugin: Any) -> None:
    spec = stage(
        components={"blind": {"type": "acme_blind"}}, inputs={"query": ["blind.query"]}, output="blind.documents"
    )
    with pytest.raises(CompileError) as info:
        build_stage(spec, "pipeline", BuildContext(store=object(), source_of=lambda k: "stage.yaml"), guard=True)
    assert info.value.key == "pipeline.components.blind"
    assert "no 'filters' input" in str(info.value)


def test_retriever_outside_the_retrieval_stage_is_rejected(acme_plugin: Any) -> None:
    """The generation stage gets no access filter and no guard, so nothing there may read the store."""
    spec = stage(components={"acme": {"type": "acme_bm25"}}, inputs={"query": ["acme.query"]}, output="acme.documents")
    with pytest.raises(CompileError, match="belongs in the retrieval pipeline") as info:
        build_stage(spec, "generator", BuildContext(store=object(), source_of=lambda k: "gen.yaml"))
    assert info.value.key == "generator.components.acme"


def test_haystack_component_by_class_path_builds_and_runs() -> None:
    from haystack import Document

    spec = stage(
        components={
            "group": {"type": "haystack.components.rankers.MetaFieldGroupingRanker", "params": {"group_by": "team"}}
        },
        inputs={"documents": ["group.documents"]},
        output="group.documents",
    )
    built = build_stage(spec, "pipeline", ctx())
    docs = [Document(content=c, meta={"team": t}) for c, t in [("a", "x"), ("b", "y"), ("c", "x")]]
    out, _ = built.run({"documents": docs})
    assert [d.meta["team"] for d in out] == ["x", "x", "y"]
    # unknown parameters of a class-path component are still named with the valid ones
    bad = spec.model_copy(deep=True)
    bad.components["group"].params = {"group_bi": "team"}
    with pytest.raises(CompileError, match="did you mean 'group_by'"):
        build_stage(bad, "pipeline", ctx())


def test_haystack_retriever_by_class_path_is_a_retriever_and_must_fit_the_store() -> None:
    """InMemoryBM25Retriever takes a document_store: it is given ragconf's store (not left unfiltered), and a
    class that cannot work with it is a config error, not a retriever without the access filter."""
    path = "haystack.components.retrievers.InMemoryBM25Retriever"
    assert default_registry().get(path).takes_document_store()
    spec = stage(components={"r": {"type": path}}, inputs={"query": ["r.query"]}, output="r.documents")
    with pytest.raises(CompileError, match="cannot create component 'r'"):
        build_stage(spec, "pipeline", BuildContext(store=object(), source_of=lambda k: "stage.yaml"), guard=True)


@pytest.mark.parametrize(
    "path",
    [
        "os.system",
        "subprocess.Popen",
        "builtins.eval",
        "haystack.core.pipeline.Pipeline",  # haystack, but not a component module
        "haystack.components.rankers.os",  # a module re-exported by an allowed one
        "haystack.components.rankers.__builtins__",
        "ragconf.store.sqlite.SQLiteChunkStore",
    ],
)
def test_class_paths_outside_the_allowlist_are_refused(path: str) -> None:
    import sys

    before = set(sys.modules)
    with pytest.raises(RegistryError) as info:
        build_stage(stage(components={"x": {"type": path}}), "pipeline", ctx())
    assert info.value.key == "pipeline.components.x.type"
    assert not {"subprocess"} & (set(sys.modules) - before)


def test_components_describe_lists_params_with_types_defaults_and_sockets() -> None:
    reg = default_registry()
    bm25 = reg.get("bm25_retriever").describe()
    assert bm25["retriever"] is True and bm25["params"]["document_store"]["injected"] is True
    assert bm25["params"]["top_k"] == {"type": "int", "required": False, "default": 10}
    assert bm25["inputs"]["query"]["required"] is True and "filters" in bm25["inputs"]
    assert bm25["outputs"] == {"documents": {"type": "list[Document]"}}
    prompt = reg.get("prompt_builder").describe()
    assert prompt["params"]["template"]["default"] == "@default_prompt" and not prompt["params"]["template"]["required"]
    assert reg.get("rrf_joiner").describe()["retriever"] is False


def test_class_path_with_a_missing_optional_dependency_is_a_config_error() -> None:
    """A Haystack component whose optional dependency is not installed (HTMLToDocument needs trafilatura) is a
    config error naming the key and what to install, not an internal error."""
    from haystack.components.converters import HTMLToDocument

    try:
        HTMLToDocument()
    except ImportError:
        pass
    else:
        pytest.skip("trafilatura is installed here")
    spec = {"html": {"type": "haystack.components.converters.HTMLToDocument"}}
    with pytest.raises(CompileError) as info:
        build_stage(stage(components=spec), "pipeline", ctx())
    assert info.value.key == "pipeline.components.html.type"
    assert "trafilatura" in str(info.value) and "not installed" in str(info.value)


def test_stage_inputs_reach_each_component_as_its_own_copy() -> None:
    """A stage pipeline files an input given to one socket as is (no defensive copy before the run), but every
    component still gets its own deep copy: a component that changes its inputs changes nothing the caller or
    another component holds; a value given to two sockets is copied for each, as Haystack does."""
    from haystack import component

    seen: list[tuple[str, int, dict[str, Any]]] = []

    @component
    class Grabby:
        def __init__(self, tag: str) -> None:
            self.tag = tag

        @component.output_types(out=dict)
        def run(self, value: dict, other: dict | None = None) -> dict[str, Any]:
            seen.append((self.tag, id(value), value))
            value["conditions"].append("changed by " + self.tag)  # a misbehaving component
            return {"out": value}

    reg = Registry([ComponentEntry("grabby", f"{__name__}:_grabby_factory")], load_plugins=False)
    _GRABBY.append(Grabby)
    spec = stage(
        components={"a": {"type": "grabby", "params": {"tag": "a"}}, "b": {"type": "grabby", "params": {"tag": "b"}}},
        inputs={"x": ["a.value"], "y": ["b.value"]},
        output="a.out",
    )
    built = build_stage(spec, "pipeline", BuildContext(registry=reg))
    mine = {"operator": "AND", "conditions": ["c1"]}
    shared = {"operator": "OR", "conditions": ["c2"]}
    out, result = built.run({"x": mine, "y": shared}, extra={"b": {"other": shared}})
    assert mine == {"operator": "AND", "conditions": ["c1"]} and shared == {"operator": "OR", "conditions": ["c2"]}
    assert all(grabbed is not mine and grabbed is not shared for _, _, grabbed in seen)
    assert out == {"operator": "AND", "conditions": ["c1", "changed by a"]}
    # the plain-Haystack path (flat inputs) still works on the same pipeline
    assert built.pipeline.run({"value": {"conditions": []}})["a"]["out"]["conditions"] == ["changed by a"]


_GRABBY: list[Any] = []


def _grabby_factory(tag: str) -> Any:
    return _GRABBY[-1](tag)


def test_fast_deepcopy_equals_haystacks_copy_and_is_installed() -> None:
    """The fast path returns what Haystack's element-by-element copy returns, as a new container, for any
    nesting; the pipeline modules use it once a stage pipeline exists."""
    from haystack import Document
    from haystack.core.pipeline import pipeline as hp
    from haystack.core.pipeline.utils import _deepcopy_with_exceptions
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from ragconf.compile import _stage_pipeline, fast_deepcopy

    atoms = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5))
    from haystack.dataclasses import ByteStream, SparseEmbedding

    meta = st.recursive(
        atoms,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
        max_leaves=8,
    )
    docs = st.builds(
        lambda t, m, e, s, b, extra: Document(
            content=t,
            meta={"k": [t], "m": m, **({"o": ByteStream(b"x")} if extra else {})},
            embedding=e,
            score=s,
            blob=ByteStream(b, meta={"m": m}) if b is not None else None,
            sparse_embedding=SparseEmbedding(indices=[0, 2], values=[0.5, 1.0]) if extra else None,
        ),
        st.text(max_size=5),
        meta,
        st.one_of(st.none(), st.lists(st.floats(allow_nan=False, width=32), max_size=4)),
        st.one_of(st.none(), st.floats(allow_nan=False)),
        st.one_of(st.none(), st.binary(max_size=4)),
        st.booleans(),
    )
    values = st.recursive(
        st.one_of(atoms, docs),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.tuples(inner, inner),
            st.dictionaries(st.text(max_size=3), inner, max_size=3),
        ),
        max_leaves=12,
    )

    @settings(max_examples=200, deadline=None)
    @given(values)
    def same(obj: object) -> None:
        fast, ref = fast_deepcopy(obj), _deepcopy_with_exceptions(obj)
        assert fast == ref and type(fast) is type(ref)
        if isinstance(obj, (list, dict)):
            assert fast is not obj

    same()
    doc = Document(content="c", meta={"acl_groups": ["g1"], "nested": {"a": [1, {"b": 2}]}}, embedding=[0.5] * 4)
    twin = fast_deepcopy(doc)
    assert twin == doc and twin is not doc and type(twin) is Document
    twin.meta["acl_groups"].append("g2")
    twin.meta["nested"]["a"][1]["b"] = 3
    twin.embedding[0] = 9.0  # type: ignore[index]
    assert doc.meta == {"acl_groups": ["g1"], "nested": {"a": [1, {"b": 2}]}} and doc.embedding == [0.5] * 4
    cyclic: dict = {}
    cyclic["self"] = cyclic
    loop = fast_deepcopy(Document(id="x", content="x", meta={"c": cyclic}))  # deepcopy's memo takes over when deep
    assert loop.meta["c"] is not cyclic
    emb = [0.5] * 384
    copied = fast_deepcopy(emb)
    copied[0] = 9.0
    assert emb[0] == 0.5  # a copy, never the caller's list
    _stage_pipeline()
    assert hp._deepcopy_with_exceptions is fast_deepcopy
