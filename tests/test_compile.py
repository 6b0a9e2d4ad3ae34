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
