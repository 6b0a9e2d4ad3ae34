"""Build hook: the wheel carries ragconf's built-in configs, the default policy bundle and the handbook example.

configs/, policies/ and examples/handbook/ stay at the top of the repository (the source of truth, where teams
and governance look for them); building a wheel copies them into ``ragconf/_builtin/``, where
``ragconf.spec.loader`` finds them through ``importlib.resources``. An editable install reads them from the
checkout instead (nothing is copied). Everything else is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: source folder (relative to the project root) -> folder inside ragconf/_builtin/
BUILTIN = {"configs": "configs", "policies": "policies", "examples/handbook": "examples/handbook"}


class BuildPyWithBuiltins(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads configs/ and policies/ from the checkout
        target = Path(self.build_lib) / "ragconf" / "_builtin"
        for src, dst in BUILTIN.items():
            source = ROOT / src
            if not source.is_dir():
                raise SystemExit(f"ragconf build: {source} is missing (the wheel must ship it)")
            shutil.copytree(
                source,
                target / dst,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".ragconf"),
            )


setup(cmdclass={"build_py": BuildPyWithBuiltins})
