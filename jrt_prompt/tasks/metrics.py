"""Answer metrics: the paper's "contains", plus exact match and token F1.

``contains`` is the metric of the paper's tables: 1 when any gold label occurs in the prediction as
a case-insensitive substring (no normalisation, no word boundaries; an empty label always
matches). Exact match and token F1 follow the usual SQuAD normalisation (lower case, punctuation
and the articles a/an/the removed, whitespace collapsed) and take the best gold label.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

METRIC_NAMES = ("contains", "exact_match", "f1")

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def contains(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when any answer occurs in ``prediction`` ignoring case, else 0.0 (the paper's metric)."""
    for label in answers:
        if re.search(re.escape(label), prediction, re.IGNORECASE):
            return 1.0
    return 0.0


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised answer."""
    norm = normalize_answer(prediction)
    return 1.0 if any(norm == normalize_answer(a) for a in answers) else 0.0


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """Best bag-of-tokens F1 between the normalised prediction and any normalised answer."""
    pred_tokens = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        gold_tokens = normalize_answer(answer).split()
        if not pred_tokens or not gold_tokens:
            best = max(best, float(pred_tokens == gold_tokens))
            continue
        common = Counter(pred_tokens) & Counter(gold_tokens)
        overlap = sum(common.values())
        if overlap == 0:
            continue
        precision = overlap / len(pred_tokens)
        recall = overlap / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def score(prediction: str, answers: Sequence[str]) -> dict[str, float]:
    """All three metrics for one prediction."""
    return {
        "contains": contains(prediction, answers),
        "exact_match": exact_match(prediction, answers),
        "f1": token_f1(prediction, answers),
    }


def mean_scores(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over rows, reported x100 like the paper (0.0 for no rows)."""
    if not rows:
        return {name: 0.0 for name in METRIC_NAMES}
    return {name: 100.0 * sum(r[name] for r in rows) / len(rows) for name in METRIC_NAMES}


def mean_stderr(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n)), as lm-eval-harness
    reports them; (None, None) for no values, stderr None for one value."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, (variance / n) ** 0.5


def aggregate(rows: Sequence[dict[str, float]]) -> dict[str, float | None]:
    """Each metric as a fraction in [0, 1] with its standard error (``contains``, ``contains_stderr``, ...)."""
    out: dict[str, float | None] = {}
    for name in METRIC_NAMES:
        mean, stderr = mean_stderr([float(r[name]) for r in rows])
        out[name] = mean
        out[f"{name}_stderr"] = stderr
    return out
