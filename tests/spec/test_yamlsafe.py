"""Bounded YAML loading: alias bombs, recursive aliases, deep nesting and syntax errors are one clean error."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ragconf import yamlsafe
from ragconf.errors import IngestError, SpecError
from ragconf.spec import load_config


def billion_laughs(levels: int = 9, prefix: str = "") -> str:
    lines = [f'{prefix}l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"{prefix}l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_refused_quickly() -> None:
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match=r"sidecar\.meta\.yaml: refusing YAML whose aliases") as info:
        yamlsafe.safe_load(billion_laughs(), "sidecar.meta.yaml")
    assert time.perf_counter() - t0 < 1.0
    assert info.value.exit_code == 2


def test_error_class_is_the_callers() -> None:
    with pytest.raises(IngestError, match="front matter of a.md"):
        yamlsafe.safe_load(billion_laughs(), "front matter of a.md", error=IngestError)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a: &a [*a]", "recursive alias"),
        ("a: &a {b: *a}", "recursive alias"),
        ("[" * 50_000, "refusing YAML nested too deeply"),
        ("x: [1, 2\n", r"invalid YAML: .* at line 2, column 1"),
        ("a: 1\n---\nb: 2\n", "invalid YAML"),
        ("a: !!python/object/apply:os.system [ls]", "could not determine a constructor"),
    ],
)
def test_bad_yaml_is_one_clean_error(text: str, match: str) -> None:
    with pytest.raises(SpecError, match=match) as info:
        yamlsafe.safe_load(text, "f.yaml")
    assert str(info.value).startswith("f.yaml: ")
    assert "\n" not in info.value.message


def test_ordinary_aliases_and_merges_still_load() -> None:
    text = "base: &b {k: 1, groups: [a, b]}\nx: *b\ny: {<<: *b, k: 2}\n"
    assert yamlsafe.safe_load(text, "f.yaml") == {
        "base": {"k": 1, "groups": ["a", "b"]},
        "x": {"k": 1, "groups": ["a", "b"]},
        "y": {"k": 2, "groups": ["a", "b"]},
    }
    assert yamlsafe.safe_load(billion_laughs(levels=4), "f.yaml")["l3"][0][0][0][0] == "lol"  # 9**4 nodes: fine
    assert yamlsafe.safe_load("", "f.yaml") is None


def test_large_documents_without_aliases_are_not_limited() -> None:
    text = "\n".join(f"k{i}: [{i}, {i + 1}]" for i in range(60_000))
    assert len(yamlsafe.safe_load(text, "big.yaml")) == 60_000


def test_safe_load_file_names_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"title: caf\xe9\n")
    with pytest.raises(SpecError, match=r"latin1\.yaml: not UTF-8"):
        yamlsafe.safe_load_file(bad)
    with pytest.raises(SpecError, match=r"missing\.yaml: cannot read"):
        yamlsafe.safe_load_file(tmp_path / "missing.yaml")


def test_alias_bomb_in_a_config_group_is_refused_before_hydra(tmp_path: Path) -> None:
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "config.yaml").write_text("defaults:\n  - pipeline: bomb\n  - _self_\n")
    (tmp_path / "pipeline" / "bomb.yaml").write_text("name: bomb\n" + billion_laughs(prefix="x"))
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match=r"pipeline/bomb\.yaml: refusing YAML whose aliases"):
        load_config(tmp_path)
    assert time.perf_counter() - t0 < 5.0
