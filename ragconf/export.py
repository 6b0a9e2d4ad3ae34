"""`ragconf export`: the built stages as Haystack-native YAML that plain Haystack loads back.

Layout of the output folder (one file per stage, each a complete ``haystack.Pipeline``):

    retrieval.yaml              the retrieval pipeline with ragconf's access guard after its output
    generator-<profile>.yaml    one per generator profile (the configured generator and routing.profiles)
    stages.json                 for each file: the stage inputs (name -> [component.socket]), the output socket,
                                the retrievers that take the access filter, the config hash and policy revision

Load with ``Pipeline.loads(text, allowed_modules=["ragconf"])``: Haystack's deserialization allowlist stays on and
admits ragconf's modules only. The retrievers reopen the same store (by absolute path); the access guard enforces
the same policy bundle (and refuses a bundle at another revision); run it with
``{"access_guard": {"principal": {...}}}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["ALLOWED_MODULES", "export_stages"]

#: What ``Pipeline.loads`` must allow besides Haystack's own modules to load an export.
ALLOWED_MODULES = ["ragconf"]


def _stage_info(stage: Any) -> dict[str, Any]:
    return {
        "name": stage.name,
        "inputs": {k: [f"{c}.{s}" for c, s in v] for k, v in stage.inputs.items()},
        "output": f"{stage.output[0]}.{stage.output[1]}",
        "retrievers": list(stage.retrievers),
        "guarded": stage.guarded,
    }


def _absolute_store_paths(node: Any) -> Any:
    """Store paths in the dump are made absolute, so the export reopens the same store from any directory."""
    if isinstance(node, dict):
        out = {k: _absolute_store_paths(v) for k, v in node.items()}
        params = out.get("init_parameters")
        store = isinstance(out.get("type"), str) and out["type"].startswith("ragconf.store.")
        if store and isinstance(params, dict) and isinstance(params.get("path"), str):
            params["path"] = str(Path(params["path"]).resolve())
        return out
    if isinstance(node, list):
        return [_absolute_store_paths(v) for v in node]
    return node


def dumps(pipeline: Any) -> str:
    """Haystack YAML of ``pipeline`` (Haystack's own marshaller), with absolute store paths."""
    from haystack.marshal import YamlMarshaller

    return YamlMarshaller().marshal(_absolute_store_paths(pipeline.to_dict()))


def export_stages(rag: Any, out_dir: str | Path) -> list[Path]:
    """Write every stage of ``rag`` (a :class:`ragconf.runtime.RagApp`) into ``out_dir``; return the files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = (
        "# ragconf export ({what}); config hash {hash}, policy bundle revision {rev}\n"
        "# load: haystack.Pipeline.loads(text, allowed_modules={allowed})\n"
    )
    common = {"hash": rag.loaded.hash[:12], "rev": str(rag.policy.bundle_revision)[:12], "allowed": ALLOWED_MODULES}
    stages: dict[str, Any] = {}
    written: list[Path] = []

    def write(filename: str, what: str, stage: Any) -> None:
        path = out / filename
        path.write_text(header.format(what=what, **common) + dumps(stage.pipeline), encoding="utf-8")
        stages[filename] = _stage_info(stage)
        written.append(path)

    write("retrieval.yaml", "retrieval stage", rag.retrieval)
    for profile in rag.profiles:
        write(f"generator-{profile}.yaml", f"generator profile '{profile}'", rag.generation(profile))
    manifest = {
        "config_hash": rag.loaded.hash,
        "policy_revision": rag.policy.bundle_revision,
        "generator": rag.spec.generator.name,
        "allowed_modules": ALLOWED_MODULES,
        "stages": stages,
    }
    path = out / "stages.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    written.append(path)
    return written
