"""Set disjointness (SD), the paper's reduction for recall: two sets that share one element.

Set A is read first, then set B; the model marks every element of B with ``YES`` (it is also in A)
or ``NO``. Exactly one element is shared, so a row is answered when its marks are all right: the
model has found the shared element and nothing else. The marks are teacher-forced and every one
is scored (a dense loss; a single final answer gives too little signal to learn from scratch).

Orders: ``short_first`` (A is the short set) and ``long_first`` (A is the long set). A streaming
model must hold A while it reads B, so it needs state for |A| elements: less when the short set
comes first. Forms (the query is set B)::

    default         A  SEP  B*
    question_first  B  SEP  A  SEP  B*
    jrt             B  SEP  A  SEP  A  SEP  B*          (B* = b1 m1 b2 m2 ... with marks m)

Reading twice lets the model keep the smaller set whichever comes first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import JRTError
from .batch import IGNORE, TokenBatch, pad_right_cat
from .forms import PromptForm

PAD, SEP, YES, NO = 0, 1, 2, 3
FIRST_ELEMENT = 4
ORDERS = ("short_first", "long_first")


@dataclass(frozen=True)
class SetDisjointnessTask:
    short_size: int = 8
    long_size: int = 48
    num_elements: int = 252
    name: str = "sd"

    def __post_init__(self) -> None:
        if not 1 <= self.short_size <= self.long_size:
            raise JRTError(
                f"set sizes short={self.short_size}, long={self.long_size} are invalid: need 1 <= short <= long"
            )
        if self.short_size + self.long_size - 1 > self.num_elements:
            raise JRTError("num_elements is too small for two sets sharing exactly one element")

    @property
    def vocab_size(self) -> int:
        return FIRST_ELEMENT + self.num_elements

    @property
    def pad_id(self) -> int:
        return PAD

    def variants(self) -> tuple[str, ...]:
        return ORDERS

    def sets(self, batch_size: int, generator: torch.Generator):
        """Draw (short [b,s], long [b,l], shared [b]): both sets hold ``shared``, nothing else in common."""
        b, s, l = batch_size, self.short_size, self.long_size
        pool = (
            torch.rand(b, self.num_elements, generator=generator).argsort(dim=1)[:, : s + l - 1]
            + FIRST_ELEMENT
        )
        shared = pool[:, 0]
        short = pool[:, :s]
        long = torch.cat([pool[:, :1], pool[:, s:]], dim=1)
        short = short.gather(1, torch.rand(b, s, generator=generator).argsort(dim=1))
        long = long.gather(1, torch.rand(b, l, generator=generator).argsort(dim=1))
        return short, long, shared

    def render(self, short, long, shared, form: PromptForm, order: str) -> TokenBatch:
        if order not in ORDERS:
            raise JRTError(f"set-disjointness order {order!r} is unknown: use short_first or long_first")
        first, second = (short, long) if order == "short_first" else (long, short)
        b, n2 = second.shape
        sep = torch.full((b, 1), SEP, dtype=torch.long)
        marks = torch.where(second == shared[:, None], YES, NO)
        marked = torch.stack([second, marks], dim=2).reshape(b, -1)
        if form is PromptForm.default:
            head = [first, sep]
        elif form is PromptForm.question_first:
            head = [second, sep, first, sep]
        elif form is PromptForm.context_first:
            head = [first, sep, first, sep]
        else:
            head = [second, sep, first, sep, first, sep]
        ids = torch.cat(head + [marked], dim=1)
        start = ids.shape[1] - marked.shape[1]
        targets = torch.full_like(ids, IGNORE)
        groups = torch.full_like(ids, -1)
        pos = start + 2 * torch.arange(n2)
        targets[:, pos] = marks
        groups[:, pos] = torch.arange(b)[:, None].expand(b, n2)
        return TokenBatch(ids, targets, groups)

    def sample(
        self, batch_size: int, generator: torch.Generator, form: PromptForm, variant: str = "short_first"
    ) -> TokenBatch:
        return self.render(*self.sets(batch_size, generator), form, variant)

    def sample_mixture(self, batch_size: int, generator: torch.Generator, forms) -> TokenBatch:
        """One batch split evenly over every (form, order) pair."""
        combos = [(f, o) for f in forms for o in ORDERS]
        base, extra = divmod(batch_size, len(combos))
        parts = []
        for i, (f, o) in enumerate(combos):
            n = base + (1 if i < extra else 0)
            if n:
                parts.append(self.sample(n, generator, f, o))
        return pad_right_cat(parts, PAD)
