"""Multi-query associative recall (MQAR): key-value pairs, then queried keys.

Token layout (``SEP`` between segments)::

    default         k1 v1 k2 v2 ... kK vK  SEP  q1 a1 q2 a2 ... qQ aQ
    question_first  q1 ... qQ  SEP  k1 v1 ... kK vK  SEP  q1 a1 ... qQ aQ
    jrt             q1 ... qQ  SEP  k1 v1 ... kK vK  SEP  k1 v1 ... kK vK  SEP  q1 a1 ... qQ aQ

Every queried key is one of the K keys of its row (keys are distinct within a row), and its answer
is the value paired with it, so answers are correct by construction. All Q answers are teacher-
forced and scored (the multi-query loss): the model must predict ``a_i`` at the position of ``q_i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import JRTError
from .batch import IGNORE, TokenBatch, pad_right_cat
from .forms import PromptForm

PAD, SEP = 0, 1
FIRST_KEY = 2


@dataclass(frozen=True)
class MQARTask:
    """MQAR with ``num_pairs`` pairs per row and ``num_queries`` queried keys.

    Keys come from ``num_keys`` ids and values from ``num_values`` ids (disjoint ranges), so the
    vocabulary is ``2 + num_keys + num_values``.
    """

    num_pairs: int = 64
    num_queries: int = 8
    num_keys: int = 254
    num_values: int = 256
    name: str = "mqar"

    def __post_init__(self) -> None:
        if self.num_pairs < 1 or self.num_queries < 1:
            raise JRTError("MQAR needs at least one pair and one query (num_pairs, num_queries >= 1)")
        if self.num_queries > self.num_pairs:
            raise JRTError(
                f"num_queries={self.num_queries} exceeds num_pairs={self.num_pairs}: queried keys are distinct pairs"
            )
        if self.num_pairs > self.num_keys:
            raise JRTError(
                f"num_pairs={self.num_pairs} exceeds num_keys={self.num_keys}: keys in a row are distinct"
            )

    @property
    def vocab_size(self) -> int:
        return FIRST_KEY + self.num_keys + self.num_values

    @property
    def pad_id(self) -> int:
        return PAD

    @property
    def chance(self) -> float:
        return 1.0 / self.num_values

    def variants(self) -> tuple[str, ...]:
        return ("",)

    def length(self, form: PromptForm) -> int:
        k, q = self.num_pairs, self.num_queries
        return {
            PromptForm.default: 2 * k + 1 + 2 * q,
            PromptForm.question_first: q + 2 * k + 2 + 2 * q,
            PromptForm.jrt: q + 4 * k + 3 + 2 * q,
            PromptForm.context_first: 4 * k + 2 + 2 * q,
        }[form]

    def facts(self, batch_size: int, generator: torch.Generator):
        """Draw (keys [b,K], values [b,K], query index [b,Q]) for ``batch_size`` rows."""
        b, k = batch_size, self.num_pairs
        keys = torch.rand(b, self.num_keys, generator=generator).argsort(dim=1)[:, :k] + FIRST_KEY
        values = torch.randint(0, self.num_values, (b, k), generator=generator) + FIRST_KEY + self.num_keys
        query_index = torch.rand(b, k, generator=generator).argsort(dim=1)[:, : self.num_queries]
        return keys, values, query_index

    def render(self, keys, values, query_index, form: PromptForm) -> TokenBatch:
        """Lay out drawn facts in one prompt form."""
        b = keys.shape[0]
        sep = torch.full((b, 1), SEP, dtype=torch.long)
        context = torch.stack([keys, values], dim=2).reshape(b, -1)
        q_keys = keys.gather(1, query_index)
        q_vals = values.gather(1, query_index)
        answers = torch.stack([q_keys, q_vals], dim=2).reshape(b, -1)
        if form is PromptForm.default:
            head = [context, sep]
        elif form is PromptForm.question_first:
            head = [q_keys, sep, context, sep]
        elif form is PromptForm.context_first:
            head = [context, sep, context, sep]
        else:
            head = [q_keys, sep, context, sep, context, sep]
        ids = torch.cat(head + [answers], dim=1)
        start = ids.shape[1] - answers.shape[1]
        targets = torch.full_like(ids, IGNORE)
        groups = torch.full_like(ids, -1)
        q_pos = start + 2 * torch.arange(self.num_queries)
        targets[:, q_pos] = q_vals
        groups[:, q_pos] = torch.arange(b * self.num_queries).reshape(b, self.num_queries)
        return TokenBatch(ids, targets, groups)

    def sample(
        self, batch_size: int, generator: torch.Generator, form: PromptForm, variant: str = ""
    ) -> TokenBatch:
        return self.render(*self.facts(batch_size, generator), form)

    def sample_mixture(self, batch_size: int, generator: torch.Generator, forms) -> TokenBatch:
        """One batch split evenly over ``forms`` (right-padded to the longest)."""
        sizes = _split(batch_size, len(forms))
        return pad_right_cat(
            [self.sample(n, generator, f) for n, f in zip(sizes, forms, strict=True) if n], PAD
        )


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
