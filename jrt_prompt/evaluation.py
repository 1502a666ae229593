"""``jrt eval``: the paper's recall tasks in their default and JRT forms, for one model.

For each task the rows are loaded once (hub dataset or local file), cut to the paper's context
length (``context_length - answer_length`` tokens around the answer, with the model's own
tokenizer), rendered in every requested form (repeat 1 = default prompt, 2 = the paper's twice
prompt), decoded greedily (48 new tokens, stop at the first newline, length-sorted batches) and
scored with contains / exact match / token F1.

Output follows lm-eval-harness: :func:`write_results` puts one results file per run,
``<output_path>/<model>/results_<time>.json``, with every metric as a fraction and its standard
error (``"contains,none"``, ``"contains_stderr,none"``), the settings, package versions, git commit
and device; per-example rows go to ``samples_<task>_<time>.jsonl`` beside it. Nothing is ever
overwritten. :mod:`jrt_prompt.report` turns result files into tables and charts.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import JRTArgumentError, JRTError
from .tasks import METRIC_NAMES, TaskSpec, aggregate, build_examples, expand_tasks, get_task, score
from .tasks.data import check_rows, load_task_rows

RESULTS_FORMAT = "jrt-eval-results/2"
OLD_FORMATS = ("jrt-eval-results/1",)
FILTER = "none"  # lm-eval-harness's filter name in metric keys ("contains,none")


def metric_key(metric: str, stderr: bool = False) -> str:
    """The key of a metric in a task's results, as lm-eval-harness writes it (``contains,none``)."""
    return f"{metric}{'_stderr' if stderr else ''},{FILTER}"


def check_metric(metric: str) -> str:
    if metric not in METRIC_NAMES:
        raise JRTArgumentError(f"metric {metric!r} is unknown: use one of {', '.join(METRIC_NAMES)}")
    return metric


def form_name(repeat: int) -> str:
    """ "default" for one copy, "jrt" for the paper's twice prompt, "jrt-k<k>" beyond."""
    return "default" if repeat == 1 else ("jrt" if repeat == 2 else f"jrt-k{repeat}")



# Prompts per call of the generation layer when no batch size is given (it sizes the batches).
AUTO_GROUP_ROWS = 64
# The harness-faithful mode pads without masking, so its answers depend on the batch size: it keeps
# a fixed one unless the caller sets another.
REFERENCE_BATCH_SIZE = 8

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
    # None: rows go to the generation layer AUTO_GROUP_ROWS at a time and it sizes the batches from
    # free GPU memory (8 on CPU); the reference mode's harness batches REFERENCE_BATCH_SIZE prompts
    batch_size: int | None = None
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

    check_config(config)
    specs: list[TaskSpec] = [get_task(name) for name in expand_tasks(config.tasks)]

    if loaded is None:  # find the model (no loading yet) before reading data, which may take long
        from .models.checkpoint import resolve_device
        from .models.loading import check_device, locate

        check_device(config.model, resolve_device(config.device))
        locate(config.model)
    # Read every task's data before loading the model, so a bad file fails fast.
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

    from .provenance import record

    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, list[dict[str, Any]]] = {}
    n_samples: dict[str, dict[str, int]] = {}
    for spec, repeat, source, examples in plans:
        entry = _run_one(spec, repeat, source, examples, loaded, limit, config, on_progress)
        name = entry.pop("paper_task")
        samples[name] = entry.pop("examples")
        skipped[name] = entry.pop("skipped_examples")
        n_samples[name] = {"original": len(examples), "effective": entry["n"]}
        results[name] = entry
    provenance = record(getattr(loaded, "device", config.device))
    return {
        "format": RESULTS_FORMAT,
        "model": loaded.name,
        "family": getattr(loaded, "family", None),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(time.perf_counter() - started, 3),
        "results": results,
        "n-samples": n_samples,
        "versions": provenance["versions"],
        "git_commit": provenance["git_commit"],
        "device": provenance["device"],
        "config": {
            "model": config.model,
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
            "dtype": config.dtype or "auto",
            "data": {name: str(path) for name, path in config.data.items()},
            "save_prompts": config.save_prompts,
            "python": platform.python_version(),
        },
        "samples": samples,
        "skipped": skipped,
    }


def check_config(config: EvalConfig) -> None:
    """Every option of ``config`` is valid; raised before any data or model is loaded."""
    if not config.tasks:
        raise JRTArgumentError("no task given: pass --tasks NAME[,NAME...] (e.g. --tasks swde,fda)")
    if not config.repeats or any(not isinstance(r, int) or r < 1 for r in config.repeats):
        raise JRTArgumentError(
            f"repeat values {list(config.repeats)} are invalid: use 1 (default prompt) and/or 2 (JRT), >= 1"
        )
    if config.mode not in ("default", "reference"):
        raise JRTArgumentError(f"mode {config.mode!r} is unknown: use default or reference")
    if config.max_new_tokens < 1 or (config.batch_size is not None and config.batch_size < 1):
        raise JRTArgumentError("max_new_tokens and batch_size must be positive")
    if config.limit is not None and config.limit < 1:
        raise JRTArgumentError(
            f"limit={config.limit} is invalid: evaluate at least one row per task (limit >= 1)"
        )
    if config.max_prompt_tokens is not None and config.max_prompt_tokens < 1:
        raise JRTArgumentError(
            f"max_prompt_tokens={config.max_prompt_tokens} is invalid: use a positive count"
        )
    if config.context_length is not None and config.context_length < 1:
        raise JRTArgumentError(
            f"context_length={config.context_length} is invalid: use tokens >= 1 (None: no truncation)"
        )
    if config.answer_length < 0:
        raise JRTArgumentError(f"answer_length={config.answer_length} is invalid: use tokens >= 0")
    expand_tasks(config.tasks)  # unknown task names fail here


def _run_one(spec, repeat, source, examples, loaded, limit, config, on_progress) -> dict[str, Any]:
    from .generation import generate_loaded

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
    group = config.batch_size or AUTO_GROUP_ROWS
    for b in range(0, len(order), group):
        batch = order[b : b + group]
        gens = generate_loaded(
            loaded,
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
        "alias": f"{spec.name} ({form_name(repeat)})",
        "n": len(done),
        "skipped": len(skipped),
        **{
            metric_key(name.removesuffix("_stderr"), name.endswith("_stderr")): value
            for name, value in aggregate(done).items()
        },
        "seconds": round(time.perf_counter() - started, 3),
        "examples": done,
        "skipped_examples": skipped,
    }


def _run_reference(spec, repeat, source, examples, kept, loaded, config, on_progress) -> dict[str, Any]:
    """All prompts of one (task, form) through the harness-faithful generator, which batches them
    itself (longest first, unmasked padding, left truncation to 2000 tokens)."""
    from .generation import generate_like_harness
    from .generation.harness import HARNESS_MAX_LENGTH

    started = time.perf_counter()
    prompts = [e.prompt for e in kept]
    gens = (
        generate_like_harness(
            loaded,
            prompts,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size or REFERENCE_BATCH_SIZE,
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


def _safe_name(text: str) -> str:
    """A model name as a folder name: a local path by its last part, other characters kept simple."""
    label = Path(text).name if text.startswith(("/", ".", "~")) else text
    return re.sub(r"[^A-Za-z0-9._-]+", "__", label).strip("_") or "model"


def results_path(output_path: str | os.PathLike, model: str, date: str | None = None) -> Path:
    """Where the results of a run of ``model`` go; never a file that exists.

    ``output_path`` ending in ``.json`` is the results file itself (an existing one is an error);
    anything else is a directory, holding ``<model>/results_<time>.json``.
    """
    path = Path(output_path).expanduser()
    if path.suffix == ".json":
        if path.exists():
            raise JRTError(
                f"results file {path} exists and is never overwritten: pass another file or a directory "
                "(--output-path DIR puts each run in its own file)"
            )
        if path.parent.exists() and not path.parent.is_dir():
            raise JRTError(f"{path.parent} is a file, not a directory: pass another --output-path")
        return path
    if path.exists() and not path.is_dir():
        raise JRTError(f"--output-path {path} is a file: pass a directory, or a path ending in .json")
    stamp = date or _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H-%M-%S")
    folder = path / _safe_name(model)
    candidate = folder / f"results_{stamp}.json"
    k = 2
    while candidate.exists():
        candidate = folder / f"results_{stamp}-{k}.json"
        k += 1
    return candidate


def samples_path(results_file: Path, task: str) -> Path:
    """The per-example rows of ``task`` beside ``results_file`` (lm-eval-harness's samples file)."""
    name = results_file.stem
    if name.startswith("results_"):
        return results_file.with_name(f"samples_{task}_{name[len('results_') :]}.jsonl")
    return results_file.with_name(f"{name}_samples_{task}.jsonl")


def _write_new(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        os.link(tmp, path)  # fails if ``path`` appeared meanwhile: never overwrite
    except FileExistsError:
        raise JRTError(f"{path} appeared while writing: pass another --output-path") from None
    except OSError:  # filesystems without hard links
        if path.exists():
            raise JRTError(f"{path} exists and is never overwritten: pass another --output-path") from None
        os.replace(tmp, path)
        return
    finally:
        tmp.unlink(missing_ok=True)


def write_results(results: dict[str, Any], output_path: str | os.PathLike) -> Path:
    """Write the results file and one samples file per task; returns the results file's path."""
    path = results_path(output_path, results["model"], _stamp(results.get("date")))
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {k: v for k, v in results.items() if k != "samples"}
    doc["samples"] = {}
    for task, rows in results.get("samples", {}).items():
        target = samples_path(path, task)
        _write_new(target, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        doc["samples"][task] = target.name
    _write_new(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return path


def _stamp(date: str | None) -> str | None:
    if not date:
        return None
    try:
        return _dt.datetime.fromisoformat(date).strftime("%Y-%m-%dT%H-%M-%S")
    except ValueError:
        return None


def upgrade_results(doc: dict[str, Any]) -> dict[str, Any]:
    """A results document of an earlier format in the current layout (fractions, keyed by task)."""
    if doc.get("format") == RESULTS_FORMAT:
        return doc
    if doc.get("format") not in OLD_FORMATS:
        raise JRTError(f"results format {doc.get('format')!r} is unknown (expected {RESULTS_FORMAT})")
    results, samples = {}, {}
    for entry in doc["results"]:
        entry = dict(entry)
        name = entry.pop("paper_task", None) or f"{entry['task']}_{entry['form']}"
        samples[name] = entry.pop("examples", [])
        entry.pop("skipped_examples", None)
        for metric, value in entry.pop("metrics", {}).items():
            entry[metric_key(metric)] = value / 100.0
            entry[metric_key(metric, stderr=True)] = None
        entry.setdefault("alias", f"{entry['task']} ({entry['form']})")
        results[name] = entry
    return {
        **{k: v for k, v in doc.items() if k not in ("results", "settings", "created")},
        "format": RESULTS_FORMAT,
        "date": doc.get("created"),
        "config": doc.get("settings", {}),
        "results": results,
        "samples": samples,
    }


def summary_rows(results: dict[str, Any], metric: str = "contains") -> list[dict[str, Any]]:
    """One row per task: the metric per form in percent (None when no example was scored), its
    standard error (``<form>_stderr``), and JRT minus default when both were measured."""
    check_metric(metric)
    by_task: dict[str, dict[str, Any]] = {}
    for entry in upgrade_results(results)["results"].values():
        row = by_task.setdefault(
            entry["task"], {"task": entry["task"], "n": entry["n"], "skipped": entry["skipped"], "forms": {}}
        )
        value = entry.get(metric_key(metric)) if entry["n"] else None
        stderr = entry.get(metric_key(metric, stderr=True)) if entry["n"] else None
        row[entry["form"]] = None if value is None else 100.0 * value
        row[f"{entry['form']}_stderr"] = None if stderr is None else 100.0 * stderr
        row["forms"][entry["form"]] = entry["repeat"]
        row["n"] = max(row["n"], entry["n"])
    for row in by_task.values():
        if row.get("default") is not None and row.get("jrt") is not None:
            row["delta"] = row["jrt"] - row["default"]
    return list(by_task.values())
