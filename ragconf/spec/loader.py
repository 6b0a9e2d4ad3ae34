"""Compose YAML with Hydra, resolve with OmegaConf, validate with pydantic; every failure is a SpecError
naming the dotted key, the file it came from and the valid options."""

from __future__ import annotations

import contextvars
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ragconf.errors import SpecError
from ragconf.spec.models import ProjectSpec, RagconfSpec, RoutingSpec

__all__ = [
    "BUILTIN_CONFIG_DIR",
    "BUILTIN_ROOT",
    "LoadedConfig",
    "config_hash",
    "expand_sweep",
    "group_options",
    "load_config",
    "load_profile",
    "profile_overrides",
]


def _builtin_root() -> Path:
    """The folder holding ragconf's built-in ``configs/``, ``policies/`` and ``examples/handbook/``.

    An installed wheel ships them as package data in ``ragconf/_builtin/`` (copied there by setup.py at build
    time); an editable install or a source checkout reads the top-level folders of the repository."""
    from importlib.resources import files

    packaged = Path(str(files("ragconf"))) / "_builtin"
    if (packaged / "configs").is_dir():
        return packaged
    return Path(__file__).resolve().parents[2]


#: Where ``${rc_root:}`` points: ragconf/_builtin in a wheel, the project folder in a checkout.
BUILTIN_ROOT = _builtin_root()
#: The configs shipped with ragconf.
BUILTIN_CONFIG_DIR = BUILTIN_ROOT / "configs"
GROUPS = ("corpus", "store", "embedder", "pipeline", "generator", "identity", "policy", "tracking", "eval")


@dataclass
class LoadedConfig:
    """A validated config plus where each part came from."""

    spec: RagconfSpec
    data: dict[str, Any]
    overrides: list[str]
    config_dirs: list[Path]
    choices: dict[str, str] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        return config_hash(self.data)

    def source_of(self, key: str) -> str:
        return _source_of(key, self.choices, self.config_dirs, self.overrides)


def config_hash(data: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a resolved config."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def group_options(group: str, config_dirs: list[Path]) -> list[str]:
    """Options of a config group across the search path (file stems of <dir>/<group>/*.yaml)."""
    opts: set[str] = set()
    for d in config_dirs:
        gdir = d / group
        if gdir.is_dir():
            opts.update(p.stem for p in gdir.glob("*.yaml"))
    return sorted(opts)


def _source_of(key: str, choices: dict[str, str], dirs: list[Path], overrides: list[str]) -> str:
    top = key.split(".", 1)[0].split("[", 1)[0]
    for ov in overrides:
        name = ov.lstrip("+~").split("=", 1)[0]
        if name in choices and "." not in name:
            continue  # a group choice: the option's file is the source
        if name == key or key.startswith(name + ".") or key.startswith(name + "["):
            return f"command-line override '{ov}'"
    choice = choices.get(top)
    if choice:
        for d in dirs:
            candidate = d / top / f"{choice}.yaml"
            if candidate.is_file():
                return str(candidate)
    for d in dirs:
        candidate = d / "config.yaml"
        if candidate.is_file():
            return str(candidate)
    return "<composed config>"


def _dirs_for(config_dir: str | Path | None) -> list[Path]:
    dirs: list[Path] = []
    if config_dir is not None:
        p = Path(config_dir).expanduser().resolve()
        if not p.is_dir():
            raise SpecError(f"config directory '{config_dir}' does not exist", key="--config-dir")
        if not (p / "config.yaml").is_file():
            raise SpecError(
                f"config directory '{config_dir}' has no config.yaml",
                key="--config-dir",
                hint="a config dir holds config.yaml (a defaults list) and one folder per group",
            )
        dirs.append(p)
    if BUILTIN_CONFIG_DIR.is_dir() and BUILTIN_CONFIG_DIR not in dirs:
        dirs.append(BUILTIN_CONFIG_DIR)
    return dirs


#: Most YAML files scanned in one user config folder (a folder with more is not a config folder).
MAX_CONFIG_FILES = 2000


def _check_yaml_files(dirs: list[Path]) -> None:
    """Refuse alias bombs in user config folders before Hydra/OmegaConf expands them (they would hang or exhaust
    memory). Syntax errors are left to Hydra, which reports them only for the files a config actually uses."""
    from ragconf import yamlsafe

    for d in dirs:
        if d == BUILTIN_CONFIG_DIR:
            continue
        files = sorted(d.rglob("*.yaml"))
        if len(files) > MAX_CONFIG_FILES:
            raise SpecError(f"config directory '{d}' holds {len(files)} YAML files (at most {MAX_CONFIG_FILES})")
        for f in files:
            try:
                text = f.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue  # reported by _compose when the config uses the file
            yamlsafe.check(text, str(f), syntax=False)


def _explain_hydra_error(exc: Exception, overrides: list[str], dirs: list[Path], config_name: str) -> SpecError:
    msg = str(exc)
    # Unknown option of a group, e.g. "Could not find 'store/sqlit'"
    m = re.search(r"Could not find '([\w\-/]+)/([\w\-.]+)'", msg) or re.search(
        r"In '[^']*': Could not find '([\w\-/]+)/([\w\-.]+)'", msg
    )
    if m:
        group, option = m.group(1), m.group(2)
        return SpecError(
            f"unknown option '{option}' for config group '{group}'",
            key=group,
            source=_source_of(group, {}, dirs, overrides),
            valid=group_options(group, dirs),
            got=option,
        )
    m = re.search(r"Could not override '([^']+)'", msg)
    if m:
        key = m.group(1)
        missing = re.search(r"Key '([^']+)' is not in struct", msg)
        parts = tuple(key.split("."))
        param_error = _explain_unknown_param(key, overrides, dirs, config_name)
        if param_error is not None:
            return param_error
        valid = _owner(parts).valid
        # (a valid schema key the YAML leaves out never gets here: _compose_adding_schema_keys adds it)
        return SpecError(
            f"no such key '{key}'" + (f" (unknown key '{missing.group(1)}')" if missing else ""),
            key=key,
            source=f"command-line override starting with '{key}='",
            valid=valid,
            got=parts[-1],
            hint=None if valid else f"use '+{key}=VALUE' to add a key where free-form mappings allow it (e.g. params)",
        )
    m = re.search(r"Error parsing override '([^']+)'", msg)
    if m:
        return SpecError(
            f"cannot parse override '{m.group(1)}'",
            key=m.group(1).split("=", 1)[0],
            source="command line",
            hint="overrides look like key=value, +new.key=value or group=option",
        )
    bad_file = _find_unreadable_yaml(dirs)
    if bad_file is not None:
        return bad_file
    first = msg.strip().splitlines()[0] if msg.strip() else type(exc).__name__
    return SpecError(f"cannot compose the config: {first}", source=", ".join(str(d) for d in dirs))


def _find_unreadable_yaml(dirs: list[Path]) -> SpecError | None:
    """Hydra's YAML and decoding errors do not name the file: find a user config file that is not UTF-8 or
    not YAML (the built-in configs are known good) and name it, with line and column."""
    from ragconf import yamlsafe

    for d in dirs:
        if d == BUILTIN_CONFIG_DIR:
            continue
        for f in sorted(d.rglob("*.yaml"))[:MAX_CONFIG_FILES]:
            try:
                yamlsafe.check(yamlsafe.read_text(f), str(f))
            except SpecError as exc:
                return SpecError(f"cannot compose the config: {exc.message}", hint=exc.hint)
    return None


def _compose_adding_schema_keys(dirs: list[Path], overrides: list[str], config_name: str) -> Any:
    """Compose; an override of a key the schema defines but the YAML leaves out (``eval.max_queries=10``) is
    applied as an addition (``+eval.max_queries=10``) instead of failing Hydra's struct check."""
    attempt = list(overrides)
    for _ in range(len(overrides) + 1):
        try:
            return _compose(dirs[0], attempt, dirs, config_name)
        except SpecError:
            raise
        except Exception as exc:  # Hydra raises several unrelated exception types for user mistakes
            m = re.search(r"Could not override '([^']+)'", str(exc))
            key = m.group(1) if m else None
            valid = _owner(tuple(key.split("."))).valid if key else None
            idx = next((i for i, o in enumerate(attempt) if o.startswith(f"{key}=")), None) if key else None
            if key is None or not valid or key.split(".")[-1] not in valid or idx is None:
                raise _explain_hydra_error(exc, attempt, dirs, config_name) from None
            attempt[idx] = "+" + attempt[idx]
    raise SpecError("cannot compose the config", source=", ".join(str(d) for d in dirs))


def _explain_unknown_param(key: str, overrides: list[str], dirs: list[Path], config_name: str) -> SpecError | None:
    """``stage.components.NAME.params.P=V`` where the config does not set P: name the component's real
    parameters (from the registry) so a typo gets a did-you-mean instead of a generic 'not in struct'."""
    m = re.fullmatch(r"(\w+)\.components\.([\w\-]+)\.params\.(\w+)", key)
    if not m:
        return None
    stage, name, param = m.groups()
    rest = [o for o in overrides if not o.lstrip("+~").startswith(key + "=")]
    try:
        cfg = _compose(dirs[0], rest, dirs, config_name)
        ctype = str(cfg[stage]["components"][name]["type"])
    except Exception:
        return None
    from ragconf.registry import default_registry

    try:
        accepted = default_registry().get(ctype).init_params()
    except Exception:
        return None
    source = f"command-line override starting with '{key}='"
    if accepted is None:
        return None
    if param in accepted:
        return SpecError(
            f"'{param}' is a parameter of {ctype} but this config does not set it",
            key=key,
            source=source,
            hint=f"add it with '+{key}=VALUE'",
        )
    return SpecError(
        f"component '{name}' ({ctype}) has no parameter '{param}'",
        key=key,
        source=source,
        valid=sorted(a for a in accepted if a != "document_store"),
        got=param,
    )


_CONFIG_DIR: contextvars.ContextVar[Path] = contextvars.ContextVar("ragconf_config_dir", default=BUILTIN_CONFIG_DIR)


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("rc_root"):
        OmegaConf.register_new_resolver("rc_root", lambda: str(BUILTIN_ROOT))
    if not OmegaConf.has_resolver("rc_config_dir"):
        # the folder of the config being composed (--config-dir; the built-in configs otherwise): lets a team
        # folder name its documents, users and policies wherever the commands are run from
        OmegaConf.register_new_resolver("rc_config_dir", lambda: str(_CONFIG_DIR.get()))
    if not OmegaConf.has_resolver("rc_basename"):
        OmegaConf.register_new_resolver("rc_basename", lambda p: Path(str(p)).name or "corpus")


def _compose(config_dir: Path, overrides: list[str], dirs: list[Path], config_name: str) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    extra = []
    if len(dirs) > 1:
        search = ",".join(f"file://{d}" for d in dirs[1:])
        extra.append(f"hydra.searchpath=[{search}]")
    _register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None, job_name="ragconf"):
        return compose(config_name=config_name, overrides=[*overrides, *extra], return_hydra_config=True)


def load_config(
    config_dir: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    config_name: str = "config",
) -> LoadedConfig:
    """Compose ``config_name`` from ``config_dir`` (plus ragconf's built-in configs), apply ``overrides``,
    resolve interpolations and validate. Raises :class:`SpecError` on any user mistake."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    dirs = _dirs_for(config_dir)
    if not dirs:
        raise SpecError(
            f"no config directory found (ragconf's built-in configs are not at {BUILTIN_CONFIG_DIR})",
            key="--config-dir",
            hint="pass --config-dir DIR, or reinstall ragconf from a wheel built by its setup.py",
        )
    _check_yaml_files(dirs)
    cfg = _compose_adding_schema_keys(dirs, overrides, config_name)

    choices = {k: str(v) for k, v in dict(cfg.hydra.runtime.choices).items() if not k.startswith("hydra")}
    with_hydra = cfg
    from omegaconf import open_dict

    with open_dict(with_hydra):
        del with_hydra["hydra"]
    # keys every config has even when a team's config.yaml leaves them out
    base = OmegaConf.create({"project": ProjectSpec().model_dump(), "routing": RoutingSpec().model_dump()})
    token = _CONFIG_DIR.set(dirs[0])
    try:
        merged = OmegaConf.merge(base, with_hydra)
        raw = OmegaConf.to_container(merged, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        missing = re.search(r"Missing mandatory value: ([\w.\[\]]+)", str(exc))
        if missing:
            mkey = missing.group(1)
            if "." not in mkey and key:
                mkey = key
            raise SpecError(
                "a required value is not set",
                key=mkey,
                source=_source_of(mkey, choices, dirs, overrides),
                hint=f"set it on the command line: {mkey}=VALUE",
            ) from None
        raise SpecError(
            str(exc).splitlines()[0],
            key=key or None,
            source=_source_of(key, choices, dirs, overrides) if key else None,
        ) from None
    finally:
        _CONFIG_DIR.reset(token)
    assert isinstance(raw, dict)
    data: dict[str, Any] = {str(k): v for k, v in raw.items()}
    _check_integers(data, "", choices, dirs, overrides)
    try:
        spec = RagconfSpec.model_validate(data)
    except ValidationError as exc:
        raise _explain_validation(exc, data, choices, dirs, overrides) from None
    return LoadedConfig(spec=spec, data=data, overrides=overrides, config_dirs=dirs, choices=choices)


def profile_overrides(overrides: list[str] | tuple[str, ...], profile: str) -> list[str]:
    """The overrides that compose routing profile ``profile`` (``generator=<profile>``): every override of the
    command line except those of the `generator` group (its choice, or a key of the configured generator such as
    ``generator.components.llm.params.base_url``): they configure that generator, and the profile's file may
    not even have the key. Overrides of other groups apply to every profile, so they never conflict."""
    out = []
    for ov in overrides:
        name = ov.lstrip("+~").split("=", 1)[0].strip()
        if name == "generator" or name.startswith(("generator.", "generator@")):
            continue
        out.append(ov)
    return [*out, f"generator={profile}"]


def load_profile(
    loaded: LoadedConfig, profile: str, config_dir: str | Path | None = None, config_name: str = "config"
) -> LoadedConfig:
    """``loaded``'s config with the generator option ``profile`` (a `routing.profiles` entry)."""
    return load_config(config_dir, profile_overrides(loaded.overrides, profile), config_name)


INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def _check_integers(node: Any, key: str, choices: dict[str, str], dirs: list[Path], overrides: list[str]) -> None:
    """Every integer in a config is a 64-bit one (SQLite, numpy and ONNX take nothing larger): an absurd
    number is a config error naming the key and the range, not an OverflowError deep inside a component."""
    if isinstance(node, bool):
        return
    if isinstance(node, int):
        if not INT_MIN <= node <= INT_MAX:
            shown = str(node) if len(str(node)) <= 30 else str(node)[:27] + "..."
            raise SpecError(
                f"{shown} is out of range (integers must be between {INT_MIN} and {INT_MAX})",
                key=key or None,
                source=_source_of(key, choices, dirs, overrides) if key else None,
            )
    elif isinstance(node, dict):
        for k, v in node.items():
            _check_integers(v, f"{key}.{k}" if key else str(k), choices, dirs, overrides)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_integers(v, f"{key}[{i}]", choices, dirs, overrides)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _union_members(fld: Any) -> dict[str, Any] | None:
    """tag -> model of a discriminated-union field (``store``), or None for any other field. Members are tagged
    with ``Tag`` (callable discriminator) or by the Literal of the discriminator field."""
    import typing

    from pydantic import Discriminator, Tag

    disc = fld.discriminator or next((m for m in fld.metadata if isinstance(m, Discriminator)), None)
    if disc is None:
        return None
    members: dict[str, Any] = {}
    for arg in typing.get_args(fld.annotation):
        model, meta = (typing.get_args(arg)[0], typing.get_args(arg)[1:]) if hasattr(arg, "__metadata__") else (arg, ())
        tag = next((m.tag for m in meta if isinstance(m, Tag)), None)
        if tag is None and isinstance(disc, str) and disc in getattr(model, "model_fields", {}):
            literal = typing.get_args(model.model_fields[disc].annotation)
            tag = str(literal[0]) if literal else None
        if tag is not None and hasattr(model, "model_fields"):
            members[str(tag)] = model
    return members


@dataclass
class _Owner:
    """Where a config location leads in the schema: the dotted key without pydantic's union tags, the model
    that owns its last element (None: a free-form mapping), the valid keys there, and for a discriminated
    union (``store``) the field, the chosen tag and every member's model."""

    key: str
    model: Any = None
    valid: list[str] | None = None
    union_field: str | None = None
    tag: str | None = None
    members: dict[str, Any] = field(default_factory=dict)


def _owner(loc: tuple[Any, ...]) -> _Owner:
    """Walk ``loc`` (a pydantic error location or a dotted key split on '.') through the schema. A
    discriminated union takes its member from the tag pydantic puts in the location (``store.sqlite.hosts``);
    without a tag (an override, ``store.hosts``) the valid keys are those of every member."""
    import typing

    model: Any = RagconfSpec
    members: dict[str, Any] = {}
    union_field: str | None = None
    tag: str | None = None
    clean: list[Any] = []
    parts = list(loc)
    i = 0
    skip_next = False
    while i < len(parts) - 1:
        part = parts[i]
        clean.append(part)
        i += 1
        if skip_next:  # a dict key or list index inside a container field
            skip_next = False
            continue
        if isinstance(part, int) or model is None:
            continue
        fld = model.model_fields.get(part)
        if fld is None:
            model = None
            continue
        ann = fld.annotation
        tagged = _union_members(fld)
        if tagged is not None:
            union_field, tag, members = str(part), None, tagged
            if i < len(parts) - 1 and parts[i] in members:
                tag = str(parts[i])
                i += 1  # pydantic's tag, not a config key
            model = members.get(tag) if tag else None
            continue
        if hasattr(ann, "model_fields"):
            model = ann
            continue
        origin, args = typing.get_origin(ann), typing.get_args(ann)
        if origin in (dict, list):
            inner = args[-1] if args else None
            model = inner if hasattr(inner, "model_fields") else None
            skip_next = True
        else:  # Optional[Model] and friends
            model = next((a for a in args if hasattr(a, "model_fields")), None)
    if parts:
        clean.append(parts[-1])
    owner = _Owner(_dotted(tuple(clean)), model, union_field=union_field, tag=tag, members=members)
    if model is not None:
        owner.valid = list(model.model_fields)
    elif members and len(clean) >= 2 and clean[-2] == union_field:
        owner.valid = sorted({k for m in members.values() for k in m.model_fields})
    return owner


def _model_at(loc: tuple[Any, ...]) -> Any:
    """The pydantic model class that owns the last element of ``loc`` (for listing valid keys)."""
    return _owner(loc).model


def _other_member_hint(owner: _Owner, name: str) -> str | None:
    """``hosts`` under a sqlite store: say which store type has that key."""
    others = [t for t, m in owner.members.items() if t != owner.tag and name in m.model_fields]
    if not others or owner.union_field is None:
        return None
    return (
        f"'{name}' is a key of {owner.union_field} type "
        + " / ".join(f"'{t}'" for t in others)
        + (f" (choose it with {owner.union_field}={others[0]})")
    )


def _explain_validation(
    exc: ValidationError, data: dict[str, Any], choices: dict[str, str], dirs: list[Path], overrides: list[str]
) -> SpecError:
    errors = exc.errors()
    lines = []
    first: SpecError | None = None
    for err in errors:
        loc = tuple(p for p in err["loc"] if p not in ("function-after",))
        owner = _owner(loc)
        key = owner.key
        source = _source_of(key, choices, dirs, overrides)
        ctx = err.get("ctx") or {}
        if err["type"] == "extra_forbidden":
            e = SpecError(
                "unknown key" + (f" for {owner.union_field} type '{owner.tag}'" if owner.tag else ""),
                key=key,
                source=source,
                valid=owner.valid,
                got=str(loc[-1]),
                hint=_other_member_hint(owner, str(loc[-1])),
            )
        elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            disc = str(ctx.get("discriminator", "")).strip("'")
            disc = disc if disc.isidentifier() else "type"  # a callable discriminator reads `type`
            tags = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", ""))) or sorted(_owner((*loc, disc)).members)
            key = f"{key}.{disc}"
            source = _source_of(key, choices, dirs, overrides)
            if err["type"] == "union_tag_not_found":
                e = SpecError("required key is missing", key=key, source=source, valid=tags)
            else:
                e = SpecError(
                    f"invalid value {ctx.get('tag')!r}", key=key, source=source, valid=tags, got=ctx.get("tag")
                )
        elif err["type"] == "missing":
            e = SpecError("required key is missing", key=key, source=source)
        elif err["type"] == "literal_error":
            expected = ctx.get("expected", "")
            valid = re.findall(r"'([^']*)'", str(expected))
            e = SpecError(
                f"invalid value {err.get('input')!r}", key=key, source=source, valid=valid, got=err.get("input")
            )
        else:
            e = SpecError(f"{err['msg']} (got {err.get('input')!r})", key=key, source=source)
        first = first or e
        lines.append(str(e))
    if len(lines) == 1 and first is not None:
        return first
    return SpecError(f"{len(lines)} problems in the config:\n" + "\n".join(f"- {line}" for line in lines))


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Expand Hydra sweep overrides (``k=a,b``) into the cartesian product of plain override lists."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except Exception as exc:
        raise SpecError(f"cannot parse overrides: {exc}", source="command line") from None
    axes: list[list[str]] = []
    for ov in parsed:
        key = ov.get_key_element()
        if ov.is_sweep_override():
            axes.append([f"{key}={v}" for v in ov.sweep_string_iterator()])
        else:
            axes.append([ov.input_line or f"{key}={ov.get_value_element_as_str()}"])
    return [list(combo) for combo in itertools.product(*axes)]
