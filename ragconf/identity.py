"""Identity: resolve a user id to a :class:`~ragconf.types.Principal` from the identity config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ragconf.errors import SpecError
from ragconf.spec.models import IdentitySpec, UserSpec
from ragconf.types import Principal

__all__ = ["Directory"]


class Directory:
    """Users from ``identity.users_dir`` (one ``<id>.yaml`` per user, or a ``users.yaml`` mapping) plus
    inline ``identity.users``."""

    def __init__(self, spec: IdentitySpec) -> None:
        self.spec = spec
        self.users: dict[str, UserSpec] = {}
        self.sources: dict[str, str] = {}
        if spec.users_dir:
            self._load_dir(Path(spec.users_dir))
        for uid, user in spec.users.items():
            self.users[uid] = user
            self.sources[uid] = "identity.users"

    def _load_dir(self, root: Path) -> None:
        from ragconf.yamlsafe import safe_load_file

        if not root.is_dir():
            raise SpecError(f"users directory '{root}' does not exist", key="identity.users_dir")
        for path in sorted(root.glob("*.y*ml")):
            data = safe_load_file(path) or {}  # SpecError naming the file: not UTF-8, not YAML, an alias bomb
            if path.stem == "users" and not isinstance(data, dict):
                raise SpecError(
                    f"must map user ids to users, got {type(data).__name__}", key="identity.users_dir", source=str(path)
                )
            entries: dict[str, Any] = data if path.stem == "users" else {path.stem: data}
            for uid, raw in entries.items():
                try:
                    self.users[str(uid)] = UserSpec.model_validate(raw)
                except ValidationError as exc:
                    err = exc.errors()[0]
                    loc = ".".join(str(p) for p in err["loc"])
                    valid = list(UserSpec.model_fields) if err["type"] == "extra_forbidden" else None
                    raise SpecError(
                        err["msg"],
                        key=f"{uid}.{loc}" if loc else str(uid),
                        source=str(path),
                        valid=valid,
                        got=err["loc"][-1] if err["loc"] else None,
                    ) from None
                self.sources[str(uid)] = str(path)

    def ids(self) -> list[str]:
        return sorted(self.users)

    def resolve(self, user_id: str | None) -> Principal:
        """The principal for ``user_id`` (or ``identity.default_user``); unknown users are a SpecError."""
        uid = user_id or self.spec.default_user
        if not uid:
            raise SpecError(
                "no user given", key="--user", valid=self.ids(), hint="pass --user ID or set identity.default_user"
            )
        user = self.users.get(uid)
        if user is None:
            raise SpecError(
                f"unknown user '{uid}'",
                key="--user",
                source=self.spec.users_dir or "identity.users",
                valid=self.ids(),
                got=uid,
            )
        return Principal(
            id=uid,
            groups=tuple(user.groups),
            tenant=user.tenant,
            clearance=user.clearance,
            attributes=dict(user.attributes),
        )
