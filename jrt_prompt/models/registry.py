"""The model roster: short names for the paper's models, read from ``configs/models.yaml``."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import JRTError

_REQUIRED = ("family", "adapter", "params")


@dataclass(frozen=True)
class ModelSpec:
    """One roster entry (see the field list at the top of configs/models.yaml)."""

    name: str
    family: str
    adapter: str
    params: str
    hub_id: str | None = None
    alt_hub_ids: tuple[str, ...] = ()
    tokenizer: str | None = None
    arch: dict[str, Any] = field(default_factory=dict)
    state_bytes: int | None = None
    kv_bytes_per_token: int | None = None
    paper: str = "extra"
    package: str | None = None

    @property
    def hub_ids(self) -> tuple[str, ...]:
        return ((self.hub_id,) if self.hub_id else ()) + self.alt_hub_ids

    def memory_bytes(self, prompt_tokens: int) -> int | None:
        """Bytes one sequence holds after reading ``prompt_tokens`` tokens (16-bit numbers)."""
        if self.kv_bytes_per_token is not None:
            return self.kv_bytes_per_token * prompt_tokens
        return self.state_bytes


def roster_path() -> Path:
    return Path(str(resources.files("jrt_prompt.configs") / "models.yaml"))


@functools.cache
def roster() -> dict[str, ModelSpec]:
    """All roster entries by short name."""
    path = roster_path()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise JRTError(f"{path} is not valid YAML ({exc}); fix the roster file") from None
    specs = {}
    for name, entry in raw.items():
        specs[name] = _parse_entry(str(name), entry, path)
    return specs


def _parse_entry(name: str, entry: Any, path: Path) -> ModelSpec:
    if not isinstance(entry, dict):
        raise JRTError(f"{path}: entry {name!r} must be a mapping of fields")
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise JRTError(f"{path}: entry {name!r} lacks field(s) {', '.join(missing)}")
    known = set(ModelSpec.__dataclass_fields__) - {"name"}
    unknown = set(entry) - known
    if unknown:
        raise JRTError(f"{path}: entry {name!r} has unknown field(s) {', '.join(sorted(unknown))}")
    values = dict(entry)
    values["alt_hub_ids"] = tuple(values.get("alt_hub_ids") or ())
    values["params"] = str(values["params"])
    values["arch"] = dict(values.get("arch") or {})
    return ModelSpec(name=name, **values)


def get_spec(name: str) -> ModelSpec | None:
    """The roster entry for a short name or a hub id, or None."""
    specs = roster()
    if name in specs:
        return specs[name]
    lowered = name.lower()
    for spec in specs.values():
        if lowered == spec.name.lower() or lowered in (h.lower() for h in spec.hub_ids):
            return spec
    return None


def suggest(name: str) -> list[str]:
    """Roster names close to ``name``, for 'did you mean' messages."""
    import difflib

    return difflib.get_close_matches(name, list(roster()), n=3, cutoff=0.5)
