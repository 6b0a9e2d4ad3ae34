"""The wheel works outside the checkout: build it offline, install it into a fresh virtualenv in a temp dir, then
run the installed `ragconf` console script there (built-in configs, policy bundle and handbook users come from
the wheel's ragconf/_builtin/, nothing from the repository).

The fresh venv reuses this interpreter's site-packages for the dependencies (a .pth line, so no network and no
heavy installs); the wheel itself is installed with --no-deps into the venv's own site-packages, which comes first
on sys.path, and the test checks that `ragconf` is imported from there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "ragconf", "configs", "policies"]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 180) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel from a copy of the sources (the shared checkout gets no build/ folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "_builtin", "*.egg-info")
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=ignore)
        else:
            shutil.copy2(p, src / name)
    shutil.copytree(ROOT / "examples" / "handbook", src / "examples" / "handbook", ignore=ignore)
    dist = tmp / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(src)]
        + ["-w", str(dist)],
        cwd=tmp,
    )
    (whl,) = dist.glob("ragconf-*.whl")
    return whl


def test_wheel_ships_configs_policies_and_handbook(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for group_file in (ROOT / "configs").rglob("*.yaml"):
        assert f"ragconf/_builtin/configs/{group_file.relative_to(ROOT / 'configs').as_posix()}" in names
    for rego in (ROOT / "policies").rglob("*"):
        if rego.is_file():
            assert f"ragconf/_builtin/policies/{rego.relative_to(ROOT / 'policies').as_posix()}" in names
    assert "ragconf/_builtin/examples/handbook/users/alice.yaml" in names
    assert "ragconf/models/minilm/tokenizer.json" in names
    assert not any("__pycache__" in n for n in names)


def test_installed_wheel_ingests_and_answers_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    # plain path lines: the dependencies are importable, the editable ragconf's finder (.pth) is not activated
    (site / "_ragconf_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)

    work = tmp_path / "team"
    docs = work / "kb"
    docs.mkdir(parents=True)
    (docs / "vpn.md").write_text(
        "---\ntitle: VPN\nacl_groups: [engineering]\nclassification: internal\n---\n"
        "# VPN\n\nConnect to the office VPN with the WireGuard profile from the portal.\n"
    )
    (docs / "holidays.txt").write_text(
        "---\nclassification: public\n---\nThe office is closed on the first Monday of August.\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", HAYSTACK_TELEMETRY_ENABLED="False"
    )
    where = _run(
        [str(py), "-c", "import ragconf.spec.loader as l; print(l.__file__); print(l.BUILTIN_ROOT)"], work, env
    ).split()
    assert where[0].startswith(str(site)) and where[1] == str(site / "ragconf" / "_builtin")

    ragconf = str(venv / "bin" / "ragconf")
    overrides = ["corpus=files", "corpus.path=kb", "tracking=disabled"]
    out = _run([ragconf, "ingest", *overrides], work, env)
    assert "2 added" in out, out
    # alice (engineering, from the shipped handbook users) sees the internal VPN page
    out = _run([ragconf, "ask", "How do I connect to the VPN?", "--user", "alice", *overrides], work, env)
    assert "WireGuard" in out and "vpn.md" in out, out
    # the shipped policy bundle keeps it from the anonymous user (public clearance, no groups)
    out = _run([ragconf, "ask", "How do I connect to the VPN?", "--user", "anonymous", *overrides], work, env)
    assert "WireGuard" not in out, out
    assert (work / ".ragconf" / "store" / "kb.sqlite").is_file()
