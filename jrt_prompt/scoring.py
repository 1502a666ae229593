"""``jrt score``: resumable batch scoring of a JSONL file of (context, question) rows.

Each input row is one JSON object with ``context`` and ``question`` (strings), and optionally
``id`` (string or integer), ``answers`` (string or list of strings), ``repeat`` (integer >= 1) and
``question_first`` (boolean) overriding the run's prompt layout. The output holds exactly one
JSON row per non-blank input line, keyed by its 1-based ``line``:

- ``status: "ok"`` rows: id, prompt/answer token counts, prediction, finish reason, latency and,
  when answers are given, the metrics (contains, exact_match, f1);
- ``status: "error"`` rows: id (when readable) and the reason (invalid JSON, missing field, wrong
  type, empty context, non-UTF-8 bytes, prompt longer than the model accepts, duplicate id).

Crash safety: rows are appended as their batch finishes, then flushed and fsync'ed. A rerun of the
same command reads the output first: rows already there are skipped, and a last line torn by a
``kill -9`` (no trailing newline, or not valid JSON) is cut away before anything is appended, so
no row is lost or written twice. When every row is done the file is rewritten in input order
(atomically, through a temporary file and ``os.replace``).
"""

from __future__ import annotations

import codecs
import fcntl
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import JRTError
from .prompts import JRTPrompt
from .tasks.metrics import METRIC_NAMES
from .tasks.metrics import score as score_prediction

log = logging.getLogger(__name__)

OPTIONAL_FIELDS = ("id", "answers", "repeat", "question_first")


@dataclass(frozen=True)
class Engine:
    """What scoring needs from a model.

    count_tokens: prompt text -> number of tokens the model will read.
    generate: (prompts, max_new_tokens) -> one Generation (text, prompt_tokens, answer_tokens,
        seconds, finish_reason) per prompt, in order.
    max_prompt_tokens: longest prompt the model accepts (None: no limit).
    """

    name: str
    count_tokens: Callable[[str], int]
    generate: Callable[[list[str], int], list[Any]]
    max_prompt_tokens: int | None = None
    tokenizer: Any = None  # needed only to cut contexts to the budget (--fit-context)
    device: Any = None  # recorded in the summary


def engine_for(loaded, *, batch_size: int = 8, stop: Sequence[str] = ("\n",)) -> Engine:
    """An :class:`Engine` over a model from :func:`jrt_prompt.load_model`."""
    tokenizer = loaded.tokenizer

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def gen(prompts: list[str], max_new_tokens: int):
        return loaded.generate(
            prompts, max_new_tokens=max_new_tokens, stop=tuple(stop), batch_size=batch_size
        )

    return Engine(
        name=loaded.name,
        count_tokens=count,
        generate=gen,
        max_prompt_tokens=loaded.token_limit(),
        tokenizer=tokenizer,
        device=getattr(loaded, "device", None),
    )


@dataclass(frozen=True)
class ScoreConfig:
    """Options of one scoring run (the command line's flags)."""

    input: Path
    out: Path
    repeat: int = 2
    question_first: bool | None = None  # None: question first whenever the context is repeated
    batch_size: int = 8
    max_new_tokens: int = 48
    limit: int | None = None
    max_prompt_tokens: int | None = None  # None: the model's own limit minus max_new_tokens
    summary: Path | None = None
    retry_errors: bool = False  # on resume, score error rows again (e.g. after raising the limit)
    fit_context: bool = False  # cut a too-long context to the budget instead of an error row
    shard: tuple[int, int] | None = None  # (index, count): score every count-th row, from index
    separator: str = "\n"
    answer_prefix: str = ""

    @property
    def summary_path(self) -> Path:
        return self.summary or self.out.with_name(self.out.name + ".summary.json")


@dataclass
class ParsedRow:
    line: int
    id: Any
    context: str = ""
    question: str = ""
    answers: list[str] | None = None
    repeat: int = 2
    question_first: bool = True
    error: str | None = None
    kind: str | None = None
    prompt: str = ""
    prompt_tokens: int = 0
    context_cut_tokens: int = 0


@dataclass
class ScoreSummary:
    """What a run did, written as the summary JSON."""

    input: str
    output: str
    model: str
    rows: int = 0
    ok: int = 0
    errors: int = 0
    done_before: int = 0
    scored_now: int = 0
    torn_lines_repaired: int = 0
    elapsed_s: float = 0.0
    rows_per_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    rows_with_answers: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)  # versions, git commit, device

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --- reading the input ---------------------------------------------------------------------------


def read_input(path: Path, limit: int | None = None) -> list[tuple[int, bytes]]:
    """(line number, raw bytes) of every non-blank line, the first ``limit`` of them."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise JRTError(
            f"input file {path} does not exist; pass a JSONL file of context/question rows"
        ) from None
    except IsADirectoryError:
        raise JRTError(f"input {path} is a directory; pass a JSONL file") from None
    rows = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)  # files saved by some editors start with a BOM
        if not raw.strip():
            continue
        rows.append((number, raw.rstrip(b"\r")))
        if limit is not None and limit >= 0 and len(rows) >= limit:
            break
    return rows


def _type_name(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
    }.get(type(value), "null" if value is None else type(value).__name__)


def parse_row(line: int, raw: bytes, config: ScoreConfig) -> ParsedRow:
    """Validate one input line; a bad line gives a row with ``error`` set."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ParsedRow(
            line,
            None,
            kind="not_utf8",
            error=f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}",
        )
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return ParsedRow(
            line, None, kind="invalid_json", error=f"invalid JSON: {exc.msg} at column {exc.colno}"
        )
    if not isinstance(obj, dict):
        return ParsedRow(
            line, None, kind="not_an_object", error=f"row is a JSON {_type_name(obj)}, expected an object"
        )
    row_id = obj.get("id", line)
    if isinstance(row_id, bool) or not isinstance(row_id, str | int):
        return ParsedRow(
            line,
            None,
            kind="wrong_type",
            error=f"field 'id' must be a string or integer, got {_type_name(row_id)}",
        )
    row = ParsedRow(line, row_id)
    for name in ("context", "question"):
        if name not in obj:
            row.kind, row.error = "missing_field", f"missing field '{name}'"
            return row
        if not isinstance(obj[name], str):
            row.kind, row.error = (
                "wrong_type",
                f"field '{name}' must be a string, got {_type_name(obj[name])}",
            )
            return row
        if not obj[name].strip():
            row.kind, row.error = f"empty_{name}", f"field '{name}' is empty"
            return row
    row.context, row.question = obj["context"], obj["question"]
    answers = obj.get("answers")
    if answers is not None:
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            row.kind, row.error = "wrong_type", "field 'answers' must be a string or a list of strings"
            return row
        row.answers = answers
    repeat = obj.get("repeat", config.repeat)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        row.kind, row.error = (
            "wrong_type",
            f"field 'repeat' must be an integer >= 1, got {json.dumps(repeat)}",
        )
        return row
    row.repeat = repeat
    qf = obj.get("question_first", config.question_first)
    if qf is None:
        qf = repeat > 1
    if not isinstance(qf, bool):
        row.kind, row.error = (
            "wrong_type",
            f"field 'question_first' must be true or false, got {json.dumps(qf)}",
        )
        return row
    row.question_first = qf
    return row


# --- the output file -----------------------------------------------------------------------------


def repair_output(path: Path) -> tuple[dict[int, dict[str, Any]], int]:
    """Rows already in ``path`` by line number, after cutting away a torn tail.

    A kill mid-write can leave a last line without its newline (or an unparsable line). Such
    lines are removed (the file is rewritten atomically when that is needed), so the rerun writes
    those rows again exactly once. Returns (rows, number of torn lines removed).
    """
    if not path.exists():
        return {}, 0
    data = path.read_bytes()
    kept: dict[int, dict[str, Any]] = {}
    good_lines: list[bytes] = []
    torn = 0
    pieces = data.split(b"\n")
    tail = pieces.pop()  # bytes after the last newline: empty unless the last write was torn
    if tail.strip():
        torn += 1
    for raw in pieces:
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
            line = row["line"]
            if not isinstance(line, int):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            torn += 1
            continue
        if line in kept:  # never keep a row twice
            continue
        kept[line] = row
        good_lines.append(raw)
    clean = b"".join(r + b"\n" for r in good_lines)
    if clean != data:
        _atomic_write(path, clean)
    return kept, torn


def _jsonl_bytes(rows) -> bytes:
    """Rows as JSON lines (UTF-8, one row per line)."""
    return b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in rows)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _OutputLock:
    """An exclusive lock on ``OUT.lock`` held for the whole run, so two runs never share an output.

    A separate lock file (not the output itself) because repairs replace the output file.
    """

    def __init__(self, out: Path, *, wait: bool = False):
        self.path = out.with_name(out.name + ".lock")
        self.file = open(self.path, "ab")
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise JRTError(
                f"{out} is being written by another scoring run; wait for it or pick another --out"
            ) from None

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
        self.file.close()


class _Appender:
    """Appends JSON rows; each batch is flushed and fsync'ed before the next one starts."""

    def __init__(self, path: Path):
        self.file = open(path, "ab")

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        self.file.write(_jsonl_bytes(rows))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def _error_row(row: ParsedRow) -> dict[str, Any]:
    return {"line": row.line, "id": row.id, "status": "error", "kind": row.kind, "error": row.error}


# --- the job -------------------------------------------------------------------------------------


def score_jsonl(
    config: ScoreConfig,
    engine: Engine,
    *,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ScoreSummary:
    """Score every row of ``config.input`` into ``config.out``, resuming a previous run.

    on_start(total rows, rows already done) is called once; on_progress(rows just finished)
    after every write.
    """
    if config.batch_size < 1:
        raise JRTError(f"--batch-size {config.batch_size} is invalid: use a positive batch size")
    if config.max_new_tokens < 1:
        raise JRTError(f"--max-new-tokens {config.max_new_tokens} is invalid: generate at least one token")
    if config.out.resolve() == Path(config.input).resolve():
        raise JRTError("--out is the input file; pick another output path")
    started = time.perf_counter()
    inputs = read_input(config.input, config.limit)
    parsed = [parse_row(line, raw, config) for line, raw in inputs]
    _mark_duplicate_ids(parsed)

    config.out.parent.mkdir(parents=True, exist_ok=True)
    if config.shard is not None:
        return _score_shard(config, engine, parsed, started, on_start, on_progress)
    leftovers = _shard_files(config.out)
    if leftovers:
        raise JRTError(
            f"{leftovers[0]} holds rows of an unfinished sharded run: rerun it with the same --shard "
            "options (or delete the shard files to start over)"
        )
    lock = _OutputLock(config.out)
    try:
        return _score_locked(
            config, engine, parsed, config.out, {}, config.summary_path, started, on_start, on_progress
        )
    finally:
        lock.release()


def _shard_path(out: Path, index: int, count: int) -> Path:
    return out.with_name(f"{out.name}.shard-{index}-of-{count}")


def _shard_files(out: Path) -> list[Path]:
    pattern = re.compile(re.escape(out.name) + r"\.shard-\d+-of-\d+$")
    return sorted(p for p in out.parent.glob(out.name + ".shard-*") if pattern.fullmatch(p.name))


def _read_rows(path: Path) -> dict[int, dict[str, Any]]:
    """Complete rows of an output another process may be writing (read only, never repaired)."""
    if not path.exists():
        return {}
    rows: dict[int, dict[str, Any]] = {}
    for raw in path.read_bytes().split(b"\n")[:-1]:
        try:
            row = json.loads(raw)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("line"), int):
            rows.setdefault(row["line"], row)
    return rows


def _score_shard(config, engine, parsed, started, on_start, on_progress) -> ScoreSummary:
    """One of ``count`` processes (e.g. one per GPU under torchrun) scoring every count-th row.

    Each shard appends to its own file ``OUT.shard-I-of-N`` (same crash safety as a plain run);
    the shard that finishes last merges all of them into OUT, in input order.
    """
    index, count = config.shard
    if count < 1 or not 0 <= index < count:
        raise JRTError(f"--shard {index}/{count} is invalid: use I/N with 0 <= I < N")
    shard = _shard_path(config.out, index, count)
    lock = _OutputLock(shard)
    try:
        summary = _score_locked(
            config,
            engine,
            parsed[index::count],
            shard,
            _read_rows(config.out),  # rows an earlier merge already moved to OUT
            shard.with_name(shard.name + ".summary.json"),
            started,
            on_start,
            on_progress,
        )
    finally:
        lock.release()
    merged = _merge_shards(config, parsed, count)
    if merged is not None:
        whole = _summarize(
            config, engine, parsed, merged, 0, summary.scored_now, 0, time.perf_counter() - started
        )
        whole.settings.update(shard=None, shards=count)
        _atomic_write(config.summary_path, (json.dumps(whole.to_json(), indent=2) + "\n").encode())
    return summary


def _merge_shards(
    config: ScoreConfig, parsed: list[ParsedRow], count: int
) -> dict[int, dict[str, Any]] | None:
    """Merge the shard files into OUT once every row is in one of them; None while a shard still runs."""
    main = _OutputLock(config.out, wait=True)
    held: list[_OutputLock] = []
    try:
        rows = _read_rows(config.out)
        files = [_shard_path(config.out, k, count) for k in range(count)]
        for path in files:
            if not path.exists():
                continue
            try:
                held.append(_OutputLock(path))  # a shard still scoring holds its lock; it merges later
            except JRTError:
                return None
            for line, row in _read_rows(path).items():
                rows.setdefault(line, row)
        if not all(row.line in rows for row in parsed):
            return None
        ordered = [rows[line] for line in sorted(rows)]
        _atomic_write(config.out, _jsonl_bytes(ordered))
        for path in files:
            path.unlink(missing_ok=True)
        return rows
    finally:
        for lock in held:
            lock.release()
        main.release()


def _score_locked(
    config, engine, parsed, write_path, earlier, summary_path, started, on_start, on_progress
) -> ScoreSummary:
    """Score ``parsed`` rows not yet done, appending to ``write_path`` (rows in ``earlier`` count as done)."""
    done, torn = repair_output(write_path)
    if torn:
        log.warning("repaired %d torn line(s) at the end of %s, left by an interrupted run", torn, write_path)
    if config.retry_errors and any(r.get("status") == "error" for r in done.values()):
        done = {line: r for line, r in done.items() if r.get("status") != "error"}
        _atomic_write(write_path, _jsonl_bytes(done.values()))
    done = {**earlier, **done}
    by_line = {row.line: row for row in parsed}
    for line, row in done.items():
        if line in by_line and row.get("id") != by_line[line].id and by_line[line].error is None:
            raise JRTError(
                f"{config.out} holds a row for line {line} with id {row.get('id')!r}, but the input has "
                f"{by_line[line].id!r} there: it was written from another input; pick another --out"
            )
    pending = [row for row in parsed if row.line not in done]
    if on_start:
        on_start(len(parsed), len(parsed) - len(pending))

    limit = config.max_prompt_tokens
    if limit is None and engine.max_prompt_tokens is not None:
        limit = engine.max_prompt_tokens - config.max_new_tokens
    for row in pending:
        if row.error is None:
            template = JRTPrompt(
                repeat=row.repeat,
                question_first=row.question_first,
                separator=config.separator,
                answer_prefix=config.answer_prefix,
            )
            row.prompt = template.render(row.context, row.question)
            row.prompt_tokens = engine.count_tokens(row.prompt)
            if limit is not None and row.prompt_tokens > limit and config.fit_context:
                _fit(row, template, engine, limit)
            elif limit is not None and row.prompt_tokens > limit:
                row.kind, row.error = (
                    "too_long",
                    f"context too long: the prompt is {row.prompt_tokens} tokens, over the limit of {limit} "
                    "prompt tokens; shorten the context or lower the repeat",
                )

    appender = _Appender(write_path)
    scored_now = 0
    try:
        bad = [row for row in pending if row.error is not None]
        appender.write([_error_row(row) for row in bad])
        if on_progress and bad:
            on_progress(len(bad))
        good = sorted((r for r in pending if r.error is None), key=lambda r: (-r.prompt_tokens, r.line))
        for i in range(0, len(good), config.batch_size):
            batch = good[i : i + config.batch_size]
            generations = engine.generate([r.prompt for r in batch], config.max_new_tokens)
            out_rows = [_ok_row(row, gen, config) for row, gen in zip(batch, generations, strict=True)]
            appender.write(out_rows)
            scored_now += len(batch)
            if on_progress:
                on_progress(len(batch))
    finally:
        appender.close()

    final, _ = repair_output(write_path)
    if all(row.line in final for row in parsed):
        ordered = [final[line] for line in sorted(final)]
        _atomic_write(write_path, _jsonl_bytes(ordered))
    elapsed = time.perf_counter() - started
    everything = {**earlier, **final}
    summary = _summarize(
        config, engine, parsed, everything, len(parsed) - len(pending), scored_now, torn, elapsed
    )
    _atomic_write(summary_path, (json.dumps(summary.to_json(), indent=2) + "\n").encode())
    return summary


def _mark_duplicate_ids(rows: list[ParsedRow]) -> None:
    first: dict[Any, int] = {}
    for row in rows:
        if row.error is not None or row.id is None:
            continue
        key = (type(row.id).__name__, row.id)
        if key in first:
            row.kind, row.error = (
                "duplicate_id",
                f"duplicate id {row.id!r} (first on line {first[key]}): ids must be unique",
            )
        else:
            first[key] = row.line


def _fit(row: ParsedRow, template: JRTPrompt, engine: Engine, limit: int) -> None:
    """Cut the row's context (every copy the same) so its prompt fits ``limit`` tokens."""
    if engine.tokenizer is None:
        raise JRTError("cutting contexts to the budget needs the model's tokenizer")
    try:
        fitted = template.fit(row.context, row.question, engine.tokenizer, limit)
    except JRTError as exc:
        row.kind, row.error = "too_long", f"context too long: {exc}"
        return
    row.prompt, row.prompt_tokens, row.context_cut_tokens = (
        fitted.text,
        fitted.prompt_tokens,
        fitted.cut_tokens,
    )


def _ok_row(row: ParsedRow, gen, config: ScoreConfig) -> dict[str, Any]:
    out = {
        "line": row.line,
        "id": row.id,
        "status": "ok",
        "repeat": row.repeat,
        "question_first": row.question_first,
        "prompt_tokens": int(gen.prompt_tokens),
        "answer_tokens": int(gen.answer_tokens),
        "prediction": gen.text,
        "finish_reason": gen.finish_reason,
        "batch_seconds": round(float(gen.seconds), 6),  # wall time of the row's whole batch
    }
    if row.context_cut_tokens:
        out["context_cut_tokens"] = row.context_cut_tokens
    if row.answers is not None:
        out["answers"] = row.answers
        out.update(score_prediction(gen.text, row.answers))
    return out


def batch_seconds(row: dict[str, Any]) -> float | None:
    """Wall time of the batch that scored ``row`` (``latency_s`` in outputs of earlier versions)."""
    value = row.get("batch_seconds", row.get("latency_s"))
    return float(value) if isinstance(value, int | float) else None


def _summarize(config, engine, parsed, final, done_before, scored_now, torn, elapsed) -> ScoreSummary:
    rows = [final[r.line] for r in parsed if r.line in final]
    ok = [r for r in rows if r.get("status") == "ok"]
    errors = [r for r in rows if r.get("status") == "error"]
    with_answers = [r for r in ok if "contains" in r]
    metrics = {}
    if with_answers:
        metrics = {m: 100.0 * sum(r[m] for r in with_answers) / len(with_answers) for m in METRIC_NAMES}
    return ScoreSummary(
        input=str(config.input),
        output=str(config.out),
        model=engine.name,
        rows=len(parsed),
        ok=len(ok),
        errors=len(errors),
        done_before=done_before,
        scored_now=scored_now,
        torn_lines_repaired=torn,
        elapsed_s=round(elapsed, 3),
        rows_per_s=round(scored_now / elapsed, 3) if elapsed > 0 else 0.0,
        metrics=metrics,
        rows_with_answers=len(with_answers),
        error_kinds=dict(Counter(r.get("kind") or "other" for r in errors)),
        settings={
            "repeat": config.repeat,
            "question_first": config.question_first,
            "batch_size": config.batch_size,
            "max_new_tokens": config.max_new_tokens,
            "limit": config.limit,
            "max_prompt_tokens": config.max_prompt_tokens,
            "fit_context": config.fit_context,
            "shard": list(config.shard) if config.shard else None,
        },
        environment=_environment(engine),
    )


def _environment(engine: Engine) -> dict[str, Any]:
    from .provenance import record

    return record(engine.device if engine.device is not None else "cpu")


def score_file(
    input: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str | Any = "demo",
    repeat: int | None = None,
    question_first: bool | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 48,
    limit: int | None = None,
    max_prompt_tokens: int | None = None,
    summary: str | os.PathLike | None = None,
    retry_errors: bool = False,
    fit_context: bool = False,
    shard: tuple[int, int] | None = None,
    device: str = "auto",
    dtype: str | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ScoreSummary:
    """Load ``model`` (a name, path or LoadedModel) and score ``input`` into ``out``.

    ``repeat`` None means 2, or 1 for models that already read their prompt twice (JRT-RNN).
    """
    from .models.loading import load_model

    if not Path(input).is_file():  # fail before spending time on loading the model
        read_input(Path(input))
    loaded = load_model(model, device=device, dtype=dtype) if isinstance(model, str | os.PathLike) else model
    if repeat is None:
        repeat = 1 if loaded.adapter.reads_prompt_twice else 2
    config = ScoreConfig(
        input=Path(input),
        out=Path(out),
        repeat=repeat,
        question_first=question_first,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        limit=limit,
        max_prompt_tokens=max_prompt_tokens,
        summary=Path(summary) if summary else None,
        retry_errors=retry_errors,
        fit_context=fit_context,
        shard=shard,
    )
    return score_jsonl(
        config, engine_for(loaded, batch_size=batch_size), on_start=on_start, on_progress=on_progress
    )
