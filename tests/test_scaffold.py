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


def test_every_scaffolded_file_validates_against_the_schema_it_names(tmp_path: Path) -> None:
    """The files a team edits (not the composed config) validate against the schema their first line names:
    config.yaml with its defaults list, each group file against its group's schema; a typo is caught."""
    import re

    import jsonschema
    import yaml

    team = tmp_path / "kb"
    init_project(team)
    checked = 0
    for path in sorted(team.rglob("*.yaml")):
        if "users" in path.parts or "policies" in path.parts:
            continue
        first = path.read_text().splitlines()[0]
        m = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
        assert m, f"{path.relative_to(team)} names no schema"
        schema = json.loads((path.parent / m.group(1)).read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        errors = list(jsonschema.Draft202012Validator(schema).iter_errors(yaml.safe_load(path.read_text())))
        assert not errors, (path.relative_to(team), [e.message for e in errors])
        checked += 1
    assert checked >= 8
    config = json.loads((team / ".schema" / "config.schema.json").read_text())
    corpus = json.loads((team / ".schema" / "corpus.schema.json").read_text())
    data = yaml.safe_load((team / "corpus" / "docs.yaml").read_text())
    data["chunking"] = {"sizee": 3}
    assert list(jsonschema.Draft202012Validator(corpus).iter_errors(data))
    assert list(jsonschema.Draft202012Validator(config).iter_errors({"defaults": [], "pipelin": {}}))
    out = tmp_path / "schemas"
    assert runner.invoke(app, ["schema", "--dir", str(out)]).exit_code == 0
    assert json.loads((out / "store.schema.json").read_text()) == json.loads(
        (team / ".schema" / "store.schema.json").read_text()
    )
