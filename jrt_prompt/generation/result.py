"""One answer (:class:`Generation`) and the rules that turn generated token ids into it.

Every way of generating (the decode engine, transformers' ``generate``, the harness-faithful
mode) ends here, so that EOS, stop strings and token counts mean the same thing on every path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import JRTError


@dataclass(frozen=True)
class Generation:
    """One answer.

    continuation: the generated text exactly as decoded, cut before the first stop string. It
        usually starts with the space the model generated after the prompt.
    prompt_tokens: tokens in the prompt.
    answer_tokens: tokens generated (up to the one that completed a stop string or EOS).
    batch_seconds: wall time of the whole batch this prompt was decoded in (prefill + decode),
        the same for every row of that batch.
    finish_reason: "stop" (a stop string), "eos" (end-of-text token), "length" (max_new_tokens)
        or "reference" (the harness-faithful mode, which always decodes max_new_tokens).
    row_seconds: seconds from the start of this row's batch until its answer was complete
        (prefill included); at most ``batch_seconds``. None where a path cannot tell rows apart.
    answer: the continuation with surrounding whitespace removed: what a user reads as the
        answer (``jrt run`` prints it, and it is what metrics should see).

    ``text`` (the continuation) and ``seconds`` (the batch's wall time) keep their former names.
    """

    continuation: str
    prompt_tokens: int
    answer_tokens: int
    batch_seconds: float
    finish_reason: str
    row_seconds: float | None = None
    answer: str = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "answer", self.continuation.strip())

    @property
    def text(self) -> str:
        """The raw continuation (same as :attr:`continuation`)."""
        return self.continuation

    @property
    def seconds(self) -> float:
        """The batch's wall time (same as :attr:`batch_seconds`)."""
        return self.batch_seconds


def stop_strings(stop: Sequence[str] | None) -> tuple[str, ...]:
    return tuple(s for s in (stop or ()) if s)


def finish(
    tokenizer,
    new_ids: list[int],
    prompt_tokens: int,
    batch_seconds: float,
    stop: Sequence[str] | None,
    max_new_tokens: int,
    row_seconds: float | None = None,
) -> Generation:
    """The :class:`Generation` of one row from the ids generated after its prompt.

    The ids end where generation of the row stopped (a finished row may carry the pad token
    after that). The answer ends at the first EOS, then before the earliest stop string; the
    token count is the shortest prefix of ids that produced the kept text.
    """
    eos = tokenizer.eos_token_id
    reason = "length"
    if eos is not None and eos in new_ids:
        new_ids = new_ids[: new_ids.index(eos) + 1]
        reason = "eos"
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    stops = stop_strings(stop)
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    if cut >= 0:
        text = text[:cut]
        reason = "stop"
        for n in range(1, len(new_ids) + 1):
            if len(tokenizer.decode(new_ids[:n], skip_special_tokens=True)) > cut:
                new_ids = new_ids[:n]
                break
    elif reason == "length" and len(new_ids) < max_new_tokens:
        reason = "eos"  # rows finished early are padded; the model ended them
    if row_seconds is not None:
        row_seconds = min(row_seconds, batch_seconds)
    return Generation(text, prompt_tokens, len(new_ids), batch_seconds, reason, row_seconds)


def first_stop(tokenizer, ids: list[int], start: int, stop: Sequence[str], eos: int | None) -> int | None:
    """The number of tokens after which a row is finished, looking at prefixes longer than ``start``.

    A row is finished after token n when token n is EOS or when the text of its first n tokens
    contains a stop string (exactly the test transformers' stopping criterion made after every
    token). Returns None when no prefix of ``ids`` up to its full length finishes the row.
    """
    stops = stop_strings(stop)
    if eos is not None:
        tail = ids[start:]
        eos_at = start + tail.index(eos) + 1 if eos in tail else None
    else:
        eos_at = None
    end = eos_at if eos_at is not None else len(ids)
    if stops:
        full = tokenizer.decode(ids[:end], skip_special_tokens=True)
        if any(s in full for s in stops):
            for n in range(start + 1, end + 1):
                text = full if n == end else tokenizer.decode(ids[:n], skip_special_tokens=True)
                if any(s in text for s in stops):
                    return n
    return eos_at


def pad_token_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    raise JRTError(
        "the tokenizer has neither a pad nor an EOS token: set tokenizer.pad_token before generating"
    )
