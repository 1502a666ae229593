"""``jrt eval``: the paper's recall tasks in their default and JRT forms, for one model.

For each task the rows are loaded once (hub dataset or local file), cut to the paper's context
length (``context_length - answer_length`` tokens around the answer, with the model's own
tokenizer), rendered in every requested form (repeat 1 = default prompt, 2 = the paper's twice
prompt), decoded greedily (48 new tokens, stop at the first newline, length-sorted batches) and
scored with contains / exact match / token F1. Results go to a JSON file with per-example
predictions; :mod:`jrt_prompt.report` turns result files into tables and charts.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import JRTError
from .tasks import TaskSpec, build_examples, expand_tasks, get_task, mean_scores, score
from .tasks.data import check_rows, load_task_rows

RESULTS_FORMAT = "jrt-eval-results/1"


def form_name(repeat: int) -> str:
    """ "default" for one copy, "jrt" for the paper's twice prompt, "jrt-k<k>" beyond."""
    return "default" if repeat == 1 else ("jrt" if repeat == 2 else f"jrt-k{repeat}")


@dataclass(frozen=True)
class EvalConfig:
    """Options of one ``jrt eval`` run.

    data: task name -> local JSONL/Parquet file (tasks not named load their hub dataset).
    context_length: the paper's --context_length (None: no truncation); answer_length its budget.
    max_prompt_tokens: longer prompts are cut from the left (None: the model's limit minus
        max_new_tokens), as the paper's harness did at 2048 - 48 tokens.
    """

    model: str
    tasks: tuple[str, ...]
    repeats: tuple[int, ...] = (1, 2)
    limit: int | None = None
    data: dict[str, Path] = field(default_factory=dict)
    context_length: int | None = 1000
    answer_length: int = 50
    max_new_tokens: int = 48
    batch_size: int = 8
    max_prompt_tokens: int | None = None
    save_prompts: bool = False
    mode: str = "default"  # "reference": generate as the paper's harness did (docs/inference_modes.md)
    device: str = "auto"
    dtype: str | None = None


def resolve_data(tasks: Sequence[str], values: Sequence[str]) -> dict[str, Path]:
    """Map ``--data`` values to tasks: ``TASK=PATH``, a directory of ``<task>.jsonl|.parquet``, or one file."""
    mapping: dict[str, Path] = {}
    plain: list[Path] = []
    for value in values:
        name, sep, path = value.partition("=")
        if sep and not Path(value).exists():
            mapping[get_task(name).name] = Path(path)
        else:
            plain.append(Path(value))
    names = expand_tasks(tasks)
    for path in plain:
        if path.is_dir():
            for name in names:
                for suffix in (".jsonl", ".json", ".parquet"):
                    candidate = path / f"{name}{suffix}"
                    if candidate.is_file() and name not in mapping:
                        mapping[name] = candidate
                        break
        elif len(names) == 1:
            mapping.setdefault(names[0], path)
        else:
            raise JRTError(
                f"--data {path} is one file but {len(names)} tasks were asked for; "
                "use --data TASK=PATH per task or a directory holding <task>.jsonl files"
            )
    for name in mapping:
        if name not in names:
            raise JRTError(f"--data names task {name!r}, which is not among --task {', '.join(names)}")
    return mapping


def _left_truncate(tokenizer, prompt: str, limit: int | None) -> tuple[str, int, bool]:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if limit is None or len(ids) <= limit:
        return prompt, len(ids), False
    return tokenizer.decode(ids[len(ids) - limit :], skip_special_tokens=True), limit, True


def evaluate(
    config: EvalConfig,
    loaded=None,
    *,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run every (task, repeat) pair; returns the results document (see ``RESULTS_FORMAT``)."""
    from .models.loading import load_model

    if not config.tasks:
        raise JRTError("no task given: pass --task NAME (e.g. --task swde --task fda)")
    if not config.repeats or any(r < 1 for r in config.repeats):
        raise JRTError(f"--repeat values {list(config.repeats)} are invalid: use 1 (default) and/or 2 (JRT)")
    if config.mode not in ("default", "reference"):
        raise JRTError(f"--mode {config.mode!r} is unknown: use default or reference")
    if config.max_new_tokens < 1 or config.batch_size < 1:
        raise JRTError("--max-new-tokens and --batch-size must be positive")
    specs: list[TaskSpec] = [get_task(name) for name in expand_tasks(config.tasks)]

    # Read every task's data before loading the model, so a missing file fails fast.
    loaded_rows = {}
    for spec in specs:
        rows, source = load_task_rows(spec, config.data.get(spec.name), config.limit)
        for repeat in config.repeats:
            check_rows(spec, rows, repeat, source)
        loaded_rows[spec.name] = (rows, source)

    if loaded is None:
        loaded = load_model(config.model, device=config.device, dtype=config.dtype)
    tokenizer = loaded.tokenizer
    limit = config.max_prompt_tokens
    if limit is None:
        model_limit = loaded.token_limit()
        limit = None if model_limit is None else model_limit - config.max_new_tokens

    plans = []
    for spec in specs:
        rows, source = loaded_rows[spec.name]
        for repeat in config.repeats:
            examples = build_examples(
                spec,
                rows,
                repeat,
                tokenizer=tokenizer,
                context_length=config.context_length,
                answer_length=config.answer_length,
            )
            plans.append((spec, repeat, source, examples))
    if on_start:
        on_start(sum(sum(1 for e in ex if e.skip_reason is None) for *_, ex in plans))

    started = time.perf_counter()
    results = []
    for spec, repeat, source, examples in plans:
        results.append(_run_one(spec, repeat, source, examples, loaded, limit, config, on_progress))
    return {
        "format": RESULTS_FORMAT,
        "model": loaded.name,
        "family": getattr(loaded, "family", None),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(time.perf_counter() - started, 3),
        "settings": {
            "tasks": [s.name for s in specs],
            "repeats": list(config.repeats),
            "limit": config.limit,
            "context_length": config.context_length,
            "answer_length": config.answer_length,
            "max_new_tokens": config.max_new_tokens,
            "max_prompt_tokens": limit,
            "batch_size": config.batch_size,
            "stop": ["\n"],
            "decoding": "greedy",
            "mode": config.mode,
            "device": str(getattr(loaded, "device", config.device)),
            "python": platform.python_version(),
        },
        "results": results,
    }


def _run_one(spec, repeat, source, examples, loaded, limit, config, on_progress) -> dict[str, Any]:
    tokenizer = loaded.tokenizer
    kept = [e for e in examples if e.skip_reason is None]
    if config.mode == "reference":
        return _run_reference(spec, repeat, source, examples, kept, loaded, config, on_progress)
    prepared = []
    for example in kept:
        prompt, n_tokens, cut = _left_truncate(tokenizer, example.prompt, limit)
        prepared.append((example, prompt, n_tokens, cut))
    # Longest first, as the paper's harness batches; results are put back in row order below.
    order = sorted(range(len(prepared)), key=lambda i: (-prepared[i][2], i))
    records: list[dict[str, Any] | None] = [None] * len(prepared)
    started = time.perf_counter()
    for b in range(0, len(order), config.batch_size):
        batch = order[b : b + config.batch_size]
        gens = loaded.generate(
            [prepared[i][1] for i in batch],
            max_new_tokens=config.max_new_tokens,
            stop=("\n",),
            batch_size=config.batch_size,
        )
        for i, gen in zip(batch, gens, strict=True):
            example, prompt, n_tokens, cut = prepared[i]
            record = {
                "index": example.index,
                "prediction": gen.text,
                "answers": example.answers,
                **score(gen.text, example.answers),
                "prompt_tokens": int(gen.prompt_tokens),
                "answer_tokens": int(gen.answer_tokens),
                "finish_reason": gen.finish_reason,
                "context_truncated": example.truncated,
                "prompt_left_truncated": cut,
            }
            if config.save_prompts:
                record["prompt"] = prompt
            records[i] = record
        if on_progress:
            on_progress(len(batch))
    return _entry(spec, repeat, source, examples, [r for r in records if r is not None], started)


def _entry(spec, repeat, source, examples, done, started) -> dict[str, Any]:
    skipped = [{"index": e.index, "reason": e.skip_reason} for e in examples if e.skip_reason is not None]
    return {
        "task": spec.name,
        "paper_task": spec.paper_name + ("" if repeat == 1 else "_twice" if repeat == 2 else f"_k{repeat}"),
        "repeat": repeat,
        "form": form_name(repeat),
        "source": source,
        "n": len(done),
        "skipped": len(skipped),
        "metrics": mean_scores(done),
        "seconds": round(time.perf_counter() - started, 3),
        "examples": done,
        "skipped_examples": skipped,
    }


def _run_reference(spec, repeat, source, examples, kept, loaded, config, on_progress) -> dict[str, Any]:
    """All prompts of one (task, form) through the harness-faithful generator, which batches them
    itself (longest first, unmasked padding, left truncation to 2000 tokens)."""
    from .generation import generate_like_harness
    from .models.hazy_reference import HARNESS_MAX_LENGTH

    started = time.perf_counter()
    prompts = [e.prompt for e in kept]
    gens = (
        generate_like_harness(
            loaded, prompts, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size
        )
        if prompts
        else []
    )
    budget = HARNESS_MAX_LENGTH - config.max_new_tokens
    records = []
    for example, prompt, gen in zip(kept, prompts, gens, strict=True):
        record = {
            "index": example.index,
            "prediction": gen.text,
            "answers": example.answers,
            **score(gen.text, example.answers),
            "prompt_tokens": min(int(gen.prompt_tokens), budget),
            "answer_tokens": int(gen.answer_tokens),
            "finish_reason": gen.finish_reason,
            "context_truncated": example.truncated,
            "prompt_left_truncated": int(gen.prompt_tokens) > budget,
        }
        if config.save_prompts:
            record["prompt"] = prompt
        records.append(record)
    if on_progress and kept:
        on_progress(len(kept))
    return _entry(spec, repeat, source, examples, records, started)


def write_results(results: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def summary_rows(results: dict[str, Any], metric: str = "contains") -> list[dict[str, Any]]:
    """One row per task: the metric per form, and JRT minus default when both ran."""
    by_task: dict[str, dict[str, Any]] = {}
    for entry in results["results"]:
        row = by_task.setdefault(
            entry["task"], {"task": entry["task"], "n": entry["n"], "skipped": entry["skipped"]}
        )
        row[entry["form"]] = entry["metrics"][metric]
        row["n"] = max(row["n"], entry["n"])
    for row in by_task.values():
        if "default" in row and "jrt" in row:
            row["delta"] = row["jrt"] - row["default"]
    return list(by_task.values())
