"""The config loader: composition, overrides, and errors that name key, file and valid options."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragconf.errors import SpecError
from ragconf.spec import BUILTIN_CONFIG_DIR, load_config

SCIFACT = "/work/shared/data/beir/scifact"


def test_default_config_composes_and_validates() -> None:
    cfg = load_config()
    assert cfg.spec.corpus.name == "handbook"
    assert cfg.spec.pipeline.name == "hybrid"
    assert cfg.choices["store"] == "sqlite"
    assert len(cfg.hash) == 64
    # resolved: no interpolation left
    assert "${" not in str(cfg.data)


def test_override_changes_value_and_hash() -> None:
    a = load_config()
    b = load_config(overrides=["pipeline.components.fuse.params.top_k=5"])
    assert b.spec.pipeline.components["fuse"].params["top_k"] == 5
    assert a.hash != b.hash


def test_beir_corpus_takes_path_and_names_itself(tmp_path: Path) -> None:
    cfg = load_config(overrides=["corpus=beir", f"corpus.path={tmp_path / 'scifact'}"])
    assert cfg.spec.corpus.name == "scifact"
    assert cfg.spec.corpus.sources[0].type == "beir"
    assert cfg.spec.store.path is not None and cfg.spec.store.path.endswith("scifact.sqlite")


def test_unknown_group_option_suggests_closest() -> None:
    with pytest.raises(SpecError) as info:
        load_config(overrides=["store=sqlit"])
    msg = str(info.value)
    assert "'store'" in msg and "did you mean 'sqlite'" in msg and "elasticsearch" in msg
    assert info.value.exit_code == 2


def test_unknown_key_names_key_and_valid_keys() -> None:
    with pytest.raises(SpecError) as info:
        load_config(overrides=["corpus.chunking.sizee=3"])
    msg = str(info.value)
    assert "corpus.chunking.sizee" in msg and "did you mean 'size'" in msg


def test_wrong_type_names_key_and_file() -> None:
    with pytest.raises(SpecError) as info:
        load_config(overrides=["embedder.batch_size=lots"])
    assert info.value.key == "embedder.batch_size"
    assert "command-line override" in (info.value.source or "")


def test_invalid_literal_lists_valid_values() -> None:
    with pytest.raises(SpecError) as info:
        load_config(overrides=["generator.locality=cloud"])
    assert info.value.valid == ["local", "remote"]


def test_missing_required_value_says_how_to_set_it() -> None:
    with pytest.raises(SpecError) as info:
        load_config(overrides=["corpus=beir"])
    assert info.value.key == "corpus.path"
    assert str(BUILTIN_CONFIG_DIR / "corpus" / "beir.yaml") in str(info.value)


def test_error_in_team_config_file_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "config.yaml").write_text(
        "defaults:\n  - corpus: handbook\n  - store: sqlite\n  - embedder: minilm\n"
        "  - pipeline: mine\n  - generator: extractive\n  - identity: handbook\n"
        "  - policy: default\n  - tracking: disabled\n  - eval: none\n  - _self_\n"
    )
    (tmp_path / "pipeline" / "mine.yaml").write_text(
        "name: mine\ncomponents:\n  bm25: {type: bm25_retriever, parms: {top_k: 3}}\noutput: bm25.documents\n"
    )
    with pytest.raises(SpecError) as info:
        load_config(tmp_path)
    err = info.value
    assert err.key == "pipeline.components.bm25.parms"
    assert err.source == str(tmp_path.resolve() / "pipeline" / "mine.yaml")
    assert "did you mean 'params'" in str(err)


def test_missing_config_dir_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_config(tmp_path / "nope")
