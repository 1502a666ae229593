"""What an evaluation task is (:class:`TaskSpec`); the tasks themselves are in :mod:`.registry`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation task.

    name: the name used on the command line (``jrt eval --task NAME``).
    hub_id / hub_config / split: where ``datasets`` finds it on the hub (None: local data only).
    fields: the fields every row needs (``twice_fields`` in addition for repeat >= 2).
    prompt: ``prompt(doc, repeat) -> str``, the exact prompt text.
    gold: ``gold(doc) -> list[str]``, the gold labels.
    context_key / answer_keys: what the paper's truncation cuts and which labels it centres on.
    paper_name: the harness task name of the default form (``<paper_name>_twice`` is the JRT form).
    """

    name: str
    hub_id: str | None
    hub_config: str | None
    split: str
    fields: tuple[str, ...]
    twice_fields: tuple[str, ...]
    prompt: Callable[[dict, int], str]
    gold: Callable[[dict], list[str]]
    context_key: str
    answer_keys: tuple[str, ...]
    paper_name: str
    description: str = ""
    truncate: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def required_fields(self, repeat: int) -> tuple[str, ...]:
        return self.fields + (self.twice_fields if repeat > 1 else ())
