"""`ragconf init` and `ragconf schema`: a working, commented team config folder and the JSON Schema of a config.

The folder `init` writes validates, ingests and answers as written (offline: the extractive generator, the
embedded store and Rego engine). Paths inside it are relative to the folder itself (``${rc_config_dir:}``), so
commands work from anywhere with ``--config-dir DIR``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ragconf.errors import SpecError

__all__ = ["SCAFFOLD_FILES", "config_json_schema", "file_schemas", "init_project", "write_schema", "write_schemas"]

CONFIG_YAML = """\
# ragconf team config: a defaults list choosing one option per config group. Options come from this folder
# (<group>/<option>.yaml) or from ragconf's built-in configs (`ragconf validate --json` shows the choices).
# Run from anywhere:  ragconf validate --config-dir {dir}
#                     ragconf ingest   --config-dir {dir}
#                     ragconf ask "How do I reset my password?" --user lead --config-dir {dir}
# Override any key on the command line, e.g. pipeline.components.fuse.params.top_k=5 or generator=llm.
# Editor completion: .schema/ holds a JSON Schema per file kind (`ragconf schema --dir .schema` rewrites them);
# the first line of each YAML file points editors with the YAML language server at its schema.
defaults:
  - corpus: docs          # corpus/docs.yaml: your files and how their access metadata is read
  - store: sqlite         # built-in: embedded SQLite (or `elasticsearch` with hosts/index/api_key_env)
  - embedder: minilm      # built-in: int8 MiniLM, offline
  - pipeline: search      # pipeline/search.yaml: BM25 + dense, fused
  - generator: answer     # generator/answer.yaml: offline extractive answers (generator/llm.yaml: an LLM)
  - identity: team        # identity/team.yaml + users/*.yaml
  - policy: team          # policy/team.yaml: the Rego bundle copied into policies/ (edit it there)
  - tracking: local       # built-in: a local MLflow store under project.workdir
  - eval: team            # eval/team.yaml: `ragconf eval --config-dir {dir}`
  - _self_

project:
  name: {name}
  # state (store, audit log, MLflow runs), relative to the directory the commands run in
  workdir: .ragconf

routing:
  # other generator options the routing policy may choose from, e.g. [llm]
  profiles: []
"""

CORPUS_YAML = """\
# The team's documents: Markdown, text, HTML and PDF under docs/ (see docs/ingest.md of ragconf).
# Access metadata per file: YAML front matter (.md/.txt), <meta name="..."> (HTML), PDF properties or a
# sidecar <file>.meta.yaml (any format). Fields: acl_groups (list), tenant, classification
# (public < internal < confidential < restricted). Odd values are rejected, never read as "visible".
name: {name}
sources:
  - type: files
    path: ${{rc_config_dir:}}/docs
    include: ["**/*.md", "**/*.txt", "**/*.html", "**/*.htm", "**/*.pdf"]
    exclude: []
access:
  # source metadata key of each access field (null: this corpus has no such field)
  acl_groups: acl_groups
  tenant: tenant
  classification: classification
  # what a document gets for the access fields it lacks; without defaults, a file with no access metadata is
  # quarantined (not indexed, listed by `ingest`)
  defaults:
    tenant: {tenant}
    classification: internal
  # map your labels onto the levels, e.g. {{Confidential: confidential}}
  classification_map: {{}}
chunking:
  strategy: markdown   # markdown (heading-aware) | recursive | none
  size: 200            # words
  overlap: 40
"""

PIPELINE_YAML = """\
# The retrieval pipeline: Haystack components by alias (`ragconf components --json` lists their parameters and
# sockets) or Haystack's own by class path (haystack.components.*). ragconf feeds the access policy's filter
# to every retriever and appends an access guard after `output`.
name: search
components:
  query_embedder:
    type: text_embedder
  bm25:
    type: bm25_retriever
    params: {top_k: 50}
  dense:
    type: embedding_retriever
    params: {top_k: 50}
  fuse:
    type: rrf_joiner
    params: {top_k: 8}
connections:
  - {sender: query_embedder.embedding, receiver: dense.query_embedding}
  - {sender: bm25.documents, receiver: fuse.documents}
  - {sender: dense.documents, receiver: fuse.documents}
inputs:
  query: [bm25.query, query_embedder.text]
output: fuse.documents
"""

ANSWER_YAML = """\
# Offline answers: sentences from the retrieved passages, each with a numbered citation (no model server).
name: answer
locality: local
components:
  answer:
    type: extractive_answer
    params: {max_sentences: 3}
inputs:
  query: [answer.query]
  documents: [answer.documents]
output: answer.replies
"""

LLM_YAML = """\
# An OpenAI-compatible endpoint (choose it with generator=llm, or list it in routing.profiles). The API key is
# read from the environment variable named by api_key_env; `locality`, `provider` and `region` are what the
# routing policy sees when it decides whether a request may leave the machine.
name: llm
locality: remote
provider: openai
region: eu
components:
  prompt:
    type: prompt_builder
  llm:
    type: openai
    params:
      model: gpt-4o-mini
      base_url: null        # e.g. http://127.0.0.1:8000/v1 for a local vLLM / llama.cpp server
      api_key_env: OPENAI_API_KEY
connections:
  - {sender: prompt.prompt, receiver: llm.prompt}
inputs:
  query: [prompt.query]
  documents: [prompt.documents]
output: llm.replies
"""

IDENTITY_YAML = """\
# Users: one YAML file per user in users/ (file name = user id). `ask --user ID` and `eval` use them; the
# server maps API keys / JWT subjects onto the same ids.
users_dir: ${rc_config_dir:}/users
users:
  anonymous: {groups: [], tenant: null, clearance: public}
default_user: null
"""

LEAD_YAML = """\
# A team member: sees internal and confidential documents of the tenant, and those of the groups below.
groups: [{group}]
tenant: {tenant}
clearance: confidential
attributes: {{roles: [admin]}}
"""

GUEST_YAML = """\
# A guest of the tenant: public documents only.
groups: []
tenant: {tenant}
clearance: public
"""

POLICY_YAML = """\
# The embedded Rego engine over the bundle copied into policies/ (edit the rules and their *_test.rego there;
# `ragconf policy test --config-dir {dir}` runs the tests and checks filter/allow agree).
# policies/ragconf/routing/data.json is the policy data file: tenants pinned to providers/regions, blocked tenants.
engine: embedded
bundle: ${{rc_config_dir:}}/policies
audit:
  sink: file
  path: ${{project.workdir}}/audit.jsonl
"""

EVAL_YAML = """\
# An evaluation set stub: eval/queries.jsonl ({"_id", "text"}) and eval/qrels/test.tsv (query-id, corpus-id =
# the document's path under docs/, score). Add real questions; gates fail `ragconf eval` with exit 4.
name: team
path: ${rc_config_dir:}/eval
split: test
user: lead
personas: [lead, guest]
top_k: 10
gates:
  - "leakage == 0"
"""

WELCOME_MD = """\
---
title: Welcome
classification: public
---
# Welcome

This folder is indexed by `ragconf ingest`. Replace this page with your documents.

## How do I reset my password?
Open the self-service portal and choose "Forgot password"; a reset link arrives by e-mail within minutes.
"""

TEAM_MD = """\
---
title: Team handbook
acl_groups: [{group}]
classification: confidential
---
# Team handbook

## Who is on call?
The on-call rota is in the team calendar; the secondary takes over when the primary does not answer in 10 minutes.
"""

QUERIES = '{"_id": "q1", "text": "How do I reset my password?"}\n'
QRELS = "query-id\tcorpus-id\tscore\nq1\twelcome.md\t1\n"

#: relative path -> template (formatted with dir, name, tenant, group)
SCAFFOLD_FILES: dict[str, str] = {
    "config.yaml": CONFIG_YAML,
    "corpus/docs.yaml": CORPUS_YAML,
    "pipeline/search.yaml": PIPELINE_YAML,
    "generator/answer.yaml": ANSWER_YAML,
    "generator/llm.yaml": LLM_YAML,
    "identity/team.yaml": IDENTITY_YAML,
    "users/lead.yaml": LEAD_YAML,
    "users/guest.yaml": GUEST_YAML,
    "policy/team.yaml": POLICY_YAML,
    "eval/team.yaml": EVAL_YAML,
    "eval/queries.jsonl": QUERIES,
    "eval/qrels/test.tsv": QRELS,
    "docs/welcome.md": WELCOME_MD,
    "docs/team/handbook.md": TEAM_MD,
}
#: templates with str.format fields (the others are written as they are)
_FORMATTED = {
    "config.yaml",
    "corpus/docs.yaml",
    "users/lead.yaml",
    "users/guest.yaml",
    "policy/team.yaml",
    "docs/team/handbook.md",
}


def init_project(
    directory: str | Path, *, name: str | None = None, tenant: str = "acme", group: str = "team", force: bool = False
) -> list[Path]:
    """Write a team config folder into ``directory`` (created if needed) and return the files written.

    Refuses to overwrite an existing file unless ``force``; the policy bundle is copied from ragconf's built-in
    one into ``policies/``."""
    from ragconf.spec.loader import BUILTIN_ROOT

    root = Path(directory).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise SpecError(f"'{directory}' exists and is not a directory", key="DIR")
    name = name or root.name or "team"
    for value, what in ((name, "--name"), (tenant, "--tenant"), (group, "--group")):
        if not value.replace("-", "").replace("_", "").isalnum():
            raise SpecError(f"'{value}' must be letters, digits, '-' or '_'", key=what)
    bundle = BUILTIN_ROOT / "policies"
    targets = [root / rel for rel in SCAFFOLD_FILES]
    if not force:
        existing = [p for p in [*targets, root / "policies"] if p.exists()]
        if existing:
            raise SpecError(
                f"'{existing[0]}' already exists ({len(existing)} of the files init writes exist)",
                key="DIR",
                hint="choose an empty folder, or pass --force to overwrite them",
            )
    fields = {"dir": str(directory), "name": name, "tenant": tenant, "group": group}
    written: list[Path] = []
    for rel, template in SCAFFOLD_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = template.format(**fields) if rel in _FORMATTED else template
        path.write_text((_schema_comment(rel) or "") + text, encoding="utf-8")
        written.append(path)
    written.extend(write_schemas(root / ".schema"))
    shutil.copytree(bundle, root / "policies", dirs_exist_ok=True)
    written.extend(sorted(p for p in (root / "policies").rglob("*") if p.is_file()))
    return written


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a composed ragconf config, for editor completion and CI checks."""
    from ragconf.spec.models import RagconfSpec

    schema = RagconfSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema.setdefault("title", "ragconf config")
    schema["description"] = (
        "A composed ragconf config (config.yaml + one option per group). Group files (corpus/*.yaml, ...) hold "
        "the value of one top-level key."
    )
    return schema


#: Config groups: a file ``<group>/<option>.yaml`` holds the value of the top-level key ``<group>``.
GROUPS = ("corpus", "store", "embedder", "pipeline", "generator", "identity", "policy", "tracking", "eval")
_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def file_schemas() -> dict[str, dict[str, Any]]:
    """One JSON Schema per kind of file a team edits: ``config`` (the primary config: a Hydra ``defaults``
    list and any top-level key, none required since the groups supply them) and one per config group (the
    value of that group's key, e.g. ``corpus/docs.yaml``)."""
    main = config_json_schema()
    defs = main.get("$defs", {})
    props = main["properties"]
    entry = {
        "anyOf": [
            {"type": "string"},
            {"type": "object", "additionalProperties": {"type": ["string", "null"]}, "maxProperties": 1},
        ]
    }
    out: dict[str, dict[str, Any]] = {
        "config": {
            "$schema": _DIALECT,
            "title": "ragconf config.yaml",
            "description": "The primary config: a defaults list (one option per group) and overrides of any key.",
            "type": "object",
            "properties": {"defaults": {"type": "array", "items": entry}, **props},
            "additionalProperties": False,
            "$defs": defs,
        }
    }
    for group in GROUPS:
        out[group] = {
            "$schema": _DIALECT,
            "title": f"ragconf {group} config ({group}/<option>.yaml)",
            **{k: v for k, v in props[group].items() if k not in ("default", "title")},
            "$defs": defs,
        }
    return out


def write_schemas(directory: str | Path) -> list[Path]:
    """``config.schema.json`` and ``<group>.schema.json`` into ``directory``; returns the files written."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in file_schemas().items():
        path = root / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written


def _schema_comment(rel: str) -> str | None:
    """The yaml-language-server modeline for a scaffolded YAML file (editor completion and checks)."""
    parts = Path(rel).parts
    if rel == "config.yaml":
        return "# yaml-language-server: $schema=.schema/config.schema.json\n"
    if len(parts) == 2 and parts[0] in GROUPS and rel.endswith(".yaml"):
        return f"# yaml-language-server: $schema=../.schema/{parts[0]}.schema.json\n"
    return None


def write_schema(path: str | Path | None = None) -> str:
    """The schema as JSON text; written to ``path`` when given."""
    text = json.dumps(config_json_schema(), indent=2, sort_keys=False) + "\n"
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text
