"""`ragconf init`, `ragconf schema` and `components --json` (in-process through Typer's CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragconf.cli import app
from ragconf.errors import SpecError
from ragconf.scaffold import SCAFFOLD_FILES, config_json_schema, init_project
from ragconf.spec import load_config

runner = CliRunner()


def test_init_writes_a_commented_folder_that_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["init", "kb", "--tenant", "initech"])
    assert result.exit_code == 0, result.output
    team = tmp_path / "kb"
    for rel in SCAFFOLD_FILES:
        assert (team / rel).is_file(), rel
    assert (team / "policies" / "ragconf" / "access" / "access.rego").is_file()
    assert (team / "policies" / "ragconf" / "routing" / "data.json").is_file()
    for rel in SCAFFOLD_FILES:
        if rel.endswith(".yaml"):
            assert (team / rel).read_text().lstrip().startswith("#"), f"{rel} has no explaining comment"
    # composes from any working directory: paths are relative to the folder (${rc_config_dir:})
    monkeypatch.chdir(tmp_path.parent)
    spec = load_config(team).spec
    assert spec.corpus.name == "kb" and spec.corpus.access.defaults["tenant"] == "initech"
    assert spec.corpus.sources[0].path == str(team / "docs")
    assert spec.identity.users_dir == str(team / "users") and spec.policy.bundle == str(team / "policies")
    assert spec.eval.path == str(team / "eval") and spec.pipeline.name == "search" and spec.generator.name == "answer"
    # the LLM generator option composes too
    llm = load_config(team, ["generator=llm"]).spec.generator
    assert llm.locality == "remote" and llm.components["llm"].type == "openai"


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    init_project(tmp_path / "t")
    (tmp_path / "t" / "pipeline" / "search.yaml").write_text("# edited by the team\n")
    with pytest.raises(SpecError, match="already exists") as info:
        init_project(tmp_path / "t")
    assert "--force" in (info.value.hint or "")
    assert (tmp_path / "t" / "pipeline" / "search.yaml").read_text() == "# edited by the team\n"
    result = runner.invoke(app, ["init", str(tmp_path / "t")])
    assert result.exit_code == 2 and "already exists" in result.output
    init_project(tmp_path / "t", force=True)
    assert "fuse" in (tmp_path / "t" / "pipeline" / "search.yaml").read_text()


def test_schema_describes_composed_configs(tmp_path: Path) -> None:
    import jsonschema

    out = tmp_path / "ragconf.schema.json"
    result = runner.invoke(app, ["schema", "-o", str(out)])
    assert result.exit_code == 0, result.output
    schema = json.loads(out.read_text())
    assert schema == config_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for overrides in ([], ["store=elasticsearch"], ["corpus=beir", "corpus.path=x"]):
        data = load_config(overrides=overrides).data
        assert not list(validator.iter_errors(data)), overrides
    # editor completion catches what the loader rejects: a key of another store type, an unknown key
    bad = load_config().data
    bad["store"] = {"type": "sqlite", "path": "x", "hosts": "http://h"}
    assert list(validator.iter_errors(bad))
    bad = load_config().data
    bad["corpus"]["chunking"]["sizee"] = 3
    assert list(validator.iter_errors(bad))
    stdout = runner.invoke(app, ["schema"])
    assert json.loads(stdout.stdout)["properties"]["store"]


def test_components_json_lists_params_and_sockets() -> None:
    result = runner.invoke(app, ["components", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["alias"]: r for r in json.loads(result.stdout)}
    assert {"bm25_retriever", "embedding_retriever", "text_embedder", "prompt_builder", "openai"} <= set(rows)
    joiner = rows["rrf_joiner"]
    assert joiner["params"]["join_mode"]["default"] == "reciprocal_rank_fusion"
    assert joiner["params"]["top_k"]["type"] == "int | None"
    assert "documents" in joiner["inputs"] and joiner["outputs"]["documents"]["type"] == "list[Document]"
    assert rows["embedding_retriever"]["retriever"] and "query_embedding" in rows["embedding_retriever"]["inputs"]
    assert rows["extractive_answer"]["outputs"]["replies"]
