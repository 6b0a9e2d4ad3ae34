"""Store specs per type (a discriminated union) and overrides of different groups that never conflict."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragconf.errors import SpecError
from ragconf.runtime import RagApp
from ragconf.spec import load_config
from ragconf.spec.loader import profile_overrides
from ragconf.spec.models import ElasticsearchStoreSpec, SqliteStoreSpec

TEAM_DEFAULTS = (
    "defaults:\n  - corpus: handbook\n  - store: mine\n  - embedder: minilm\n  - pipeline: bm25\n"
    "  - generator: extractive\n  - identity: handbook\n  - policy: default\n  - tracking: disabled\n"
    "  - eval: none\n  - _self_\n"
)


def _team(tmp_path: Path, store_yaml: str) -> Path:
    (tmp_path / "store").mkdir()
    (tmp_path / "config.yaml").write_text(TEAM_DEFAULTS)
    (tmp_path / "store" / "mine.yaml").write_text(store_yaml)
    return tmp_path


def test_each_store_type_gets_its_own_spec() -> None:
    sqlite = load_config().spec.store
    assert isinstance(sqlite, SqliteStoreSpec) and sqlite.path and sqlite.path.endswith("handbook.sqlite")
    es = load_config(overrides=["store=elasticsearch", "store.hosts=http://127.0.0.1:9201"]).spec.store
    assert isinstance(es, ElasticsearchStoreSpec)
    assert (es.hosts, es.index, es.api_key_env) == ("http://127.0.0.1:9201", "ragconf-handbook", None)
    assert "path" not in es.model_dump()


def test_key_of_another_store_type_on_the_command_line_names_valid_keys() -> None:
    with pytest.raises(SpecError) as info:
        load_config(overrides=["store.hosts=http://127.0.0.1:9200"])
    err = info.value
    assert err.key == "store.hosts" and err.exit_code == 2
    assert sorted(err.valid or []) == ["ann", "index_files", "path", "type"]
    assert "store type 'sqlite'" in str(err) and "store=elasticsearch" in (err.hint or "")
    assert "command-line override 'store.hosts=" in (err.source or "")

    with pytest.raises(SpecError) as info:
        load_config(overrides=["store=elasticsearch", "store.path=x.sqlite"])
    assert info.value.key == "store.path"
    assert sorted(info.value.valid or []) == ["api_key_env", "hosts", "index", "type"]


def test_key_of_another_store_type_in_a_team_file_names_that_file(tmp_path: Path) -> None:
    team = _team(tmp_path, "type: sqlite\npath: x.sqlite\nhosts: http://127.0.0.1:9200\n")
    with pytest.raises(SpecError) as info:
        load_config(team)
    assert info.value.key == "store.hosts"
    assert info.value.source == str(team / "store" / "mine.yaml")
    assert sorted(info.value.valid or []) == ["ann", "index_files", "path", "type"]


def test_unknown_store_type_lists_the_types(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_config(overrides=["store.type=sqlit"])
    assert info.value.key == "store.type" and sorted(info.value.valid or []) == ["elasticsearch", "sqlite"]
    assert "did you mean 'sqlite'" in str(info.value)


def test_store_without_type_is_the_embedded_one(tmp_path: Path) -> None:
    spec = load_config(_team(tmp_path, "path: team.sqlite\n")).spec
    assert isinstance(spec.store, SqliteStoreSpec) and spec.store.path == "team.sqlite"


def test_overrides_of_different_groups_never_conflict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case verbatim: a routing profile plus a key of the configured (openai) generator."""
    monkeypatch.chdir(tmp_path)
    base_url = "http://127.0.0.1:9/v1"
    overrides = [
        "routing.profiles=[extractive]",
        "generator=openai",
        f"generator.components.llm.params.base_url={base_url}",
    ]
    rag = RagApp(load_config(overrides=overrides))
    try:
        assert list(rag.profiles) == ["openai", "extractive"]
        assert rag.profiles["openai"].components["llm"].params["base_url"] == base_url
        assert "base_url" not in str(rag.profiles["extractive"].components)
        assert rag.generation("extractive").name == "extractive"
    finally:
        rag.close()
    # a profile keeps the overrides of every other group
    assert profile_overrides(["store.path=x.sqlite", "+generator.provider=acme", "generator=openai"], "llama_cpp") == [
        "store.path=x.sqlite",
        "generator=llama_cpp",
    ]
