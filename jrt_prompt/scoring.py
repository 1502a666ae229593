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
(atomically, through a temporary file and ``os.replace``; when the disk has no room for that second
copy the complete output is kept in the order the rows finished, and the summary says so).

Every row carries ``input_hash``, a hash of its input line, so a rerun against another input (or an
edited one) is refused instead of mixing two inputs in one output. Rows without an ``id`` get
``id: null`` (``line`` identifies them), so they never collide with explicit ids.

Every prompt is capped (``--max-prompt-tokens``; default: the positions the model's config
declares minus ``--max-new-tokens``, else :data:`jrt_prompt.prompts.DEFAULT_MAX_PROMPT_TOKENS`); the
cap is checked from the context's token count and ``repeat`` before any prompt is built.
SIGTERM is handled like Ctrl-C: the current batch is abandoned, the output lock released.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import JRTError, ReuseUnsupported
from .prompts import SEAM_TOKENS, JRTPrompt, count_tokens_upto, prompt_token_cap
from .tasks.metrics import METRIC_NAMES
from .tasks.metrics import score as score_prediction

log = logging.getLogger(__name__)

OPTIONAL_FIELDS = ("id", "answers", "repeat", "question_first")

# Rows of one batch are padded to its longest prompt: a batch holds at most this many (padded)
# Rows handed to the generation layer at a time when no --batch-size is given: it splits them into
# batches that fit the GPU's free memory (the decode engine's slots), and each group is appended
# (and so survives a crash) once answered.
AUTO_GROUP_ROWS = 64
# tokens per row of --batch-size, or one row at the cap, so short rows never pad up to a huge one.
BATCH_TOKENS_PER_ROW = 2048

_SURROGATE = re.compile("[\ud800-\udfff]")


REUSE_MODES = ("auto", "off")


class Terminated(KeyboardInterrupt):
    """The scoring run received SIGTERM (handled like Ctrl-C: done rows stay, the lock is released)."""


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
    # (prompt, context, question) triples, max_new_tokens -> (one Generation per triple, documents
    # read): answers from document states read once per shared context (context-first layouts).
    ask: Callable[[list[tuple[JRTPrompt, str, str]], int], tuple[list[Any], int]] | None = None


def engine_for(
    loaded,
    *,
    batch_size: int | None = None,
    stop: Sequence[str] = ("\n",),
    state_cache: str | os.PathLike | None = None,
    state_cache_bytes: int | None = None,
) -> Engine:
    """An :class:`Engine` over a model from :func:`jrt_prompt.load_model` (``batch_size`` None: the
    generation layer picks it from free GPU memory, 8 on CPU).

    state_cache: a directory keeping document states across runs (at most ``state_cache_bytes``,
    least recently used first out); used by rows that share a context in a reusable layout."""
    tokenizer = loaded.tokenizer
    cache = None
    if state_cache is not None:
        from .generation.reuse import DEFAULT_STATE_CACHE_BYTES, StateCache

        cache = StateCache(state_cache, state_cache_bytes or DEFAULT_STATE_CACHE_BYTES)

    def ask(items: list[tuple[JRTPrompt, str, str]], max_new_tokens: int):
        from .generation.reuse import ask_many, read_documents_cached

        keys: dict[tuple[JRTPrompt, str], int] = {}
        for prompt, context, _ in items:
            keys.setdefault((prompt, context), len(keys))
        states: list[Any] = [None] * len(keys)
        read = 0
        by_prompt: dict[JRTPrompt, list[tuple[int, str]]] = {}
        for (prompt, context), k in keys.items():
            by_prompt.setdefault(prompt, []).append((k, context))
        for prompt, docs in by_prompt.items():
            got, n = read_documents_cached(loaded, prompt, [c for _, c in docs], cache)
            read += n
            for (k, _), state in zip(docs, got, strict=True):
                states[k] = state
        pairs = [(states[keys[(p, c)]], q) for p, c, q in items]
        return ask_many(pairs, max_new_tokens=max_new_tokens, stop=tuple(stop), batch_size=batch_size), read

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def gen(prompts: list[str], max_new_tokens: int):
        from .generation import generate_loaded

        return generate_loaded(
            loaded, prompts, max_new_tokens=max_new_tokens, stop=tuple(stop), batch_size=batch_size
        )

    return Engine(
        name=loaded.name,
        count_tokens=count,
        generate=gen,
        max_prompt_tokens=loaded.token_limit(),
        tokenizer=tokenizer,
        device=getattr(loaded, "device", None),
        ask=ask,
    )


@dataclass(frozen=True)
class ScoreConfig:
    """Options of one scoring run (the command line's flags)."""

    input: Path
    out: Path
    repeat: int = 2
    question_first: bool | None = None  # None: question first whenever the context is repeated
    batch_size: int | None = None  # None: rows are grouped AUTO_GROUP_ROWS at a time, sized by generation
    max_new_tokens: int = 48
    limit: int | None = None
    max_prompt_tokens: int | None = None  # None: the model's own limit minus max_new_tokens
    summary: Path | None = None
    retry_errors: bool = False  # on resume, score error rows again (e.g. after raising the limit)
    fit_context: bool = False  # cut a too-long context to the budget instead of an error row
    shard: tuple[int, int] | None = None  # (index, count): score every count-th row, from index
    separator: str = "\n"
    answer_prefix: str = ""
    # "auto": rows that share a context in a reusable (context-first) layout read it once and
    # answer from copies of its state; "off": every row reads its whole prompt.
    reuse_state: str = "auto"

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
    hash: str = ""
    template: JRTPrompt | None = None  # set when the prompt is template.prefix(shared) + suffix(question)
    shared: str | None = None  # the (possibly cut) context the prompt repeats


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
    in_input_order: bool = True  # False: complete, but no disk space was left to reorder the file

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
    except OSError as exc:
        raise JRTError(f"input file {path} cannot be read ({exc.strerror}); check its permissions") from None
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


def _show(value: Any) -> str:
    """A short rendering of a bad field value for an error message."""
    if isinstance(value, bool | int | float) or value is None:
        text = json.dumps(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge integer"
        return text
    if isinstance(value, str):
        return json.dumps(value[:30], ensure_ascii=True) + ("..." if len(value) > 30 else "")
    return f"a JSON {_type_name(value)}"


def _surrogate_error(name: str, value: str) -> str | None:
    found = _SURROGATE.search(value)
    if found is None:
        return None
    return (
        f"field '{name}' holds a lone surrogate escape (\\u{ord(found.group()):04x} at character "
        f"{found.start() + 1}), which is not Unicode text: fix the escape in the input"
    )


def input_hash(raw: bytes) -> str:
    """The fingerprint of one input line that its output row carries (16 hex digits)."""
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def parse_row(line: int, raw: bytes, config: ScoreConfig) -> ParsedRow:
    """Validate one input line; a bad line gives a row with ``error`` set (nothing is raised)."""
    digest = input_hash(raw)

    def bad(kind: str, error: str, row_id: Any = None) -> ParsedRow:
        return ParsedRow(line, row_id, kind=kind, error=error, hash=digest)

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return bad("not_utf8", f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return bad("invalid_json", f"invalid JSON: {exc.msg} at column {exc.colno}")
    except RecursionError:
        return bad("invalid_json", "invalid JSON for scoring: nested too deeply; flatten the row")
    except ValueError:  # an integer longer than Python's int_max_str_digits (4300)
        return bad(
            "invalid_json",
            "invalid JSON for scoring: an integer has more than 4300 digits; write it as a string",
        )
    if not isinstance(obj, dict):
        return bad("not_an_object", f"row is a JSON {_type_name(obj)}, expected an object")
    row_id = obj.get("id")
    if row_id is not None and (isinstance(row_id, bool) or not isinstance(row_id, str | int)):
        return bad("wrong_type", f"field 'id' must be a string or integer, got {_type_name(row_id)}")
    if isinstance(row_id, str) and (problem := _surrogate_error("id", row_id)):
        return bad("invalid_unicode", problem)
    if isinstance(row_id, int) and abs(row_id) >= 2**63:
        return bad("wrong_type", "field 'id' is an integer outside the 64-bit range: use a string id")
    row = ParsedRow(line, row_id, hash=digest)

    def fail(kind: str, error: str) -> ParsedRow:
        row.kind, row.error = kind, error
        return row

    for name in ("context", "question"):
        if name not in obj:
            return fail("missing_field", f"missing field '{name}'")
        if not isinstance(obj[name], str):
            return fail("wrong_type", f"field '{name}' must be a string, got {_type_name(obj[name])}")
        if not obj[name].strip():
            return fail(f"empty_{name}", f"field '{name}' is empty")
        if problem := _surrogate_error(name, obj[name]):
            return fail("invalid_unicode", problem)
    row.context, row.question = obj["context"], obj["question"]
    answers = obj.get("answers")
    if answers is not None:
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            return fail("wrong_type", "field 'answers' must be a string or a list of strings")
        for answer in answers:
            if problem := _surrogate_error("answers", answer):
                return fail("invalid_unicode", problem)
        row.answers = answers
    repeat = obj.get("repeat", config.repeat)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        return fail("wrong_type", f"field 'repeat' must be an integer >= 1, got {_show(repeat)}")
    row.repeat = repeat
    qf = obj.get("question_first", config.question_first)
    if qf is None:
        qf = repeat > 1
    if not isinstance(qf, bool):
        return fail("wrong_type", f"field 'question_first' must be true or false, got {_show(qf)}")
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
        if data.startswith(clean):  # only a torn tail: cut it off in place (no second copy needed)
            with open(path, "r+b") as f:
                f.truncate(len(clean))
                f.flush()
                os.fsync(f.fileno())
        else:
            _atomic_write(path, clean)
    return kept, torn


def _jsonl_bytes(rows) -> bytes:
    """Rows as JSON lines (UTF-8, one row per line)."""
    return b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in rows)


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` through ``PATH.tmp``; the temporary file never outlives a failure."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _fs_error(exc: OSError, path: Path | str) -> JRTError:
    """A one-line error for a filesystem fault on ``path``, naming the fix."""
    where = exc.filename or path
    if exc.errno in _DISK_FULL:
        fix = "free disk space (or pass an --out on another disk) and rerun the same command to resume"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "pass an --out in a directory you can write to"
    elif exc.errno == errno.EISDIR:
        fix = "pass a file path as --out, not a directory"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
        fix = "a part of the --out path is a file: pass a path inside a directory"
    else:
        fix = "check the --out path"
    reason = exc.strerror or type(exc).__name__
    return JRTError(f"cannot write {where}: {reason}; {fix}")


class _OutputLock:
    """An exclusive lock on ``OUT.lock`` held for the whole run, so two runs never share an output.

    A separate lock file (not the output itself) because repairs replace the output file. The
    holder deletes the lock file before it lets go of the lock, so a process that opened the file
    just before may get the lock on a deleted file: after locking, the file must still be the one
    at the path (same inode), else the process opens the path again. Two holders are impossible.
    """

    def __init__(self, out: Path, *, wait: bool = False):
        self.path = out.with_name(out.name + ".lock")
        flags = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, flags)
            except BlockingIOError:
                os.close(fd)
                raise JRTError(
                    f"{out} is being written by another scoring run; wait for it or pick another --out"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return
            os.close(fd)  # the previous holder removed this file: lock the new one

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)


class _Signals:
    """SIGTERM handled like SIGINT while a run holds its output (main thread only).

    The signal interrupts scoring at once (Terminated / KeyboardInterrupt), except inside
    ``critical()`` — the writing of a batch's rows — where it is raised once the write is complete.
    """

    def __init__(self):
        self.depth = 0
        self.pending: BaseException | None = None
        self.previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        exc = Terminated("terminated by SIGTERM") if signum == signal.SIGTERM else KeyboardInterrupt()
        if self.depth:
            self.pending = self.pending or exc
        else:
            raise exc

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handler)
        try:
            yield self
        finally:
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def critical(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending is not None:
            exc, self.pending = self.pending, None
            raise exc


class _Appender:
    """Appends JSON rows; each batch is flushed and fsync'ed before the next one starts.

    A failed write (disk full) is cut back to the last complete row before the error is raised.
    """

    def __init__(self, path: Path, signals: _Signals | None = None):
        self.path = path
        self.signals = signals or _Signals()
        self.file = open(path, "ab")

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        data = _jsonl_bytes(rows)
        with self.signals.critical():
            if self.file is None:
                raise JRTError(f"cannot write {self.path} after an earlier failure; rerun the same command")
            start = self.file.seek(0, os.SEEK_END)
            try:
                self.file.write(data)
                self.file.flush()
                os.fsync(self.file.fileno())
            except OSError as exc:
                self._cut_back(start)
                raise _fs_error(exc, self.path) from None

    def _cut_back(self, size: int) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError), open(self.path, "r+b") as f:
            f.truncate(size)
            os.fsync(f.fileno())
        try:
            self.file = open(self.path, "ab")
        except OSError:
            self.file = None

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a full disk can refuse the last flush: rows were fsync'ed
            if self.file is not None:
                self.file.close()


def _error_row(row: ParsedRow) -> dict[str, Any]:
    return {
        "line": row.line,
        "id": row.id,
        "status": "error",
        "kind": row.kind,
        "error": row.error,
        "input_hash": row.hash,
    }


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
    if config.batch_size is not None and config.batch_size < 1:
        raise JRTError(f"--batch-size {config.batch_size} is invalid: use a positive batch size")
    if config.max_new_tokens < 1:
        raise JRTError(f"--max-new-tokens {config.max_new_tokens} is invalid: generate at least one token")
    if config.reuse_state not in REUSE_MODES:
        raise JRTError(
            f"--reuse-state {config.reuse_state!r} is invalid: use one of {', '.join(REUSE_MODES)}"
        )
    if config.out.resolve() == Path(config.input).resolve():
        raise JRTError("--out is the input file; pick another output path")
    if config.out.is_dir():
        raise JRTError(
            f"--out {config.out} is a directory: pass a file path, e.g. {config.out / 'preds.jsonl'}"
        )
    limit = prompt_token_cap(
        engine.max_prompt_tokens, config.max_new_tokens, config.max_prompt_tokens
    )  # checked before the input is read
    started = time.perf_counter()
    inputs = read_input(config.input, config.limit)
    parsed = [parse_row(line, raw, config) for line, raw in inputs]
    _mark_duplicate_ids(parsed)

    signals = _Signals()
    try:
        with signals.installed():
            config.out.parent.mkdir(parents=True, exist_ok=True)
            if config.shard is not None:
                return _score_shard(config, engine, parsed, limit, signals, started, on_start, on_progress)
            leftovers = _shard_files(config.out)
            if leftovers:
                raise JRTError(
                    f"{leftovers[0]} holds rows of an unfinished sharded run: rerun it with the same --shard "
                    "options (or delete the shard files to start over)"
                )
            lock = _OutputLock(config.out)
            try:
                return _score_locked(
                    config,
                    engine,
                    parsed,
                    limit,
                    signals,
                    config.out,
                    {},
                    config.summary_path,
                    started,
                    on_start,
                    on_progress,
                )
            finally:
                lock.release()
    except OSError as exc:
        raise _fs_error(exc, config.out) from None


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


def _score_shard(config, engine, parsed, limit, signals, started, on_start, on_progress) -> ScoreSummary:
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
            limit,
            signals,
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
        _atomic_write(config.out, _jsonl_bytes(ordered))  # the shards stay until OUT holds every row
        for path in files:
            path.unlink(missing_ok=True)
        return rows
    finally:
        for lock in held:
            lock.release()
        main.release()


def _score_locked(
    config, engine, parsed, limit, signals, write_path, earlier, summary_path, started, on_start, on_progress
) -> ScoreSummary:
    """Score ``parsed`` rows not yet done, appending to ``write_path`` (rows in ``earlier`` count as done)."""
    done, torn = repair_output(write_path)
    if torn:
        log.warning("repaired %d torn line(s) at the end of %s, left by an interrupted run", torn, write_path)
    if config.retry_errors and any(r.get("status") == "error" for r in done.values()):
        done = {line: r for line, r in done.items() if r.get("status") != "error"}
        _atomic_write(write_path, _jsonl_bytes(done.values()))
    done = {**earlier, **done}
    _check_same_input(config, parsed, done)
    pending = [row for row in parsed if row.line not in done]
    if on_start:
        on_start(len(parsed), len(parsed) - len(pending))

    for row in pending:
        if row.error is None:
            try:
                _build_prompt(row, config, engine, limit)
            except JRTError:
                raise
            except Exception as exc:  # a tokenizer refusing some text fails that row, not the run
                row.kind = "not_tokenizable"
                row.error = f"the model's tokenizer refused the row ({type(exc).__name__}: {str(exc)[:120]})"

    appender = _Appender(write_path, signals)
    scored_now = 0
    documents_read = 0
    try:
        bad = [row for row in pending if row.error is not None]
        appender.write([_error_row(row) for row in bad])
        if on_progress and bad:
            on_progress(len(bad))
        good = sorted((r for r in pending if r.error is None), key=lambda r: (-r.prompt_tokens, r.line))
        shared, good = _shared_rows(good, config, engine)
        waves = list(_waves(shared, config.batch_size or AUTO_GROUP_ROWS))
        for w, wave in enumerate(waves):
            try:
                generations, read = engine.ask(
                    [(r.template, r.shared, r.question) for r in wave], config.max_new_tokens
                )
            except ReuseUnsupported as exc:  # this model's cache cannot be shared: read rows whole
                log.warning("%s; scoring the rows that share a context one by one", exc)
                rest = [row for later in waves[w:] for row in later]
                good = sorted(good + rest, key=lambda r: (-r.prompt_tokens, r.line))
                break
            documents_read += read
            appender.write([_ok_row(row, gen, config) for row, gen in zip(wave, generations, strict=True)])
            scored_now += len(wave)
            if on_progress:
                on_progress(len(wave))
        for batch in _batches(good, config.batch_size or AUTO_GROUP_ROWS, limit):
            generations = engine.generate([r.prompt for r in batch], config.max_new_tokens)
            out_rows = [_ok_row(row, gen, config) for row, gen in zip(batch, generations, strict=True)]
            appender.write(out_rows)
            scored_now += len(batch)
            if on_progress:
                on_progress(len(batch))
    finally:
        appender.close()

    final, _ = repair_output(write_path)
    in_order = True
    if all(row.line in final for row in parsed):
        in_order = _write_in_order(write_path, final)
    elapsed = time.perf_counter() - started
    everything = {**earlier, **final}
    summary = _summarize(
        config, engine, parsed, everything, len(parsed) - len(pending), scored_now, torn, elapsed
    )
    summary.in_input_order = in_order
    summary.settings["max_prompt_tokens"] = limit
    summary.settings["shared_documents_read"] = documents_read
    _atomic_write(summary_path, (json.dumps(summary.to_json(), indent=2) + "\n").encode())
    return summary


def _check_same_input(config: ScoreConfig, parsed: list[ParsedRow], done: dict[int, dict[str, Any]]) -> None:
    """Refuse an output whose rows were scored from other input lines than the ones at hand."""
    by_line = {row.line: row for row in parsed}
    for line, row in done.items():
        if line not in by_line:
            continue
        ours = by_line[line]
        theirs = row.get("input_hash")
        if theirs is not None:
            if theirs != ours.hash:
                raise JRTError(
                    f"{config.out} holds a row for line {line} scored from another text than line {line} "
                    "of the input: it was written from another input (or that line was edited; "
                    "--retry-errors rescores edited error rows); pick another --out"
                )
        elif ours.error is None and ours.id is not None and row.get("id") != ours.id:
            raise JRTError(
                f"{config.out} holds a row for line {line} with id {row.get('id')!r}, but the input has "
                f"{ours.id!r} there: it was written from another input; pick another --out"
            )


def _build_prompt(row: ParsedRow, config: ScoreConfig, engine: Engine, limit: int) -> None:
    """Render the row's prompt and count its tokens, or mark it ``too_long``.

    ``repeat`` and the context's token count are checked before the prompt is built, so a huge
    context or repeat costs time and memory proportional to the cap, never to what was asked.
    """
    fix = f"shorten the context, lower the repeat, pass --fit-context or raise --max-prompt-tokens (now {limit})"
    if row.repeat > limit:
        row.kind, row.error = (
            "too_long",
            f"context too long: repeat {row.repeat} makes the prompt longer than the limit of {limit} "
            f"prompt tokens; {fix}",
        )
        return
    template = JRTPrompt(
        repeat=row.repeat,
        question_first=row.question_first,
        separator=config.separator,
        answer_prefix=config.answer_prefix,
    )
    per_copy = limit // row.repeat + SEAM_TOKENS
    context_tokens = count_tokens_upto(engine.count_tokens, row.context, per_copy)
    question_tokens = count_tokens_upto(engine.count_tokens, row.question, limit)
    over = context_tokens is None or context_tokens > per_copy or question_tokens is None
    if over and config.fit_context:
        _fit(row, template, engine, limit)
        return
    if over:
        what = (
            f"the question alone is over the limit of {limit} prompt tokens"
            if question_tokens is None
            else f"the context holds {'more than ' + str(per_copy) if context_tokens is None else context_tokens} "
            f"tokens, {row.repeat} copies of it are over the limit of {limit} prompt tokens"
        )
        row.kind, row.error = "too_long", f"context too long: {what}; {fix}"
        return
    row.prompt = template.render(row.context, row.question)
    row.prompt_tokens = engine.count_tokens(row.prompt)
    if template.reusable:
        row.template, row.shared = template, row.context
    if row.prompt_tokens > limit and config.fit_context:
        _fit(row, template, engine, limit)
    elif row.prompt_tokens > limit:
        row.kind, row.error = (
            "too_long",
            f"context too long: the prompt is {row.prompt_tokens} tokens, over the limit of {limit} "
            f"prompt tokens; {fix}",
        )


def _batches(rows: list[ParsedRow], batch_size: int, limit: int):
    """Length-sorted rows in batches of at most ``batch_size`` rows and of at most
    max(limit, batch_size x BATCH_TOKENS_PER_ROW) padded tokens (rows are padded to the longest)."""
    budget = max(limit, batch_size * BATCH_TOKENS_PER_ROW)
    batch: list[ParsedRow] = []
    for row in rows:
        longest = max([r.prompt_tokens for r in batch] + [row.prompt_tokens])
        if batch and (len(batch) == batch_size or (len(batch) + 1) * longest > budget):
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


def _write_in_order(path: Path, rows: dict[int, dict[str, Any]]) -> bool:
    """Rewrite ``path`` with its rows in input order; False when the disk has no room for the copy
    (the file then stays complete, in the order the rows were scored)."""
    ordered = _jsonl_bytes(rows[line] for line in sorted(rows))
    if path.read_bytes() == ordered:
        return True
    with contextlib.suppress(OSError):
        if shutil.disk_usage(path.parent).free < len(ordered) + (1 << 20):
            return False
    try:
        _atomic_write(path, ordered)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            return False
        raise
    return True


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
    row.template, row.shared = (template, fitted.context) if template.reusable else (None, None)


def _shared_rows(rows: list[ParsedRow], config: ScoreConfig, engine: Engine):
    """(rows that share their context with another row in a reusable layout, the other rows).
    Shared rows are ordered by document, so a wave of them reads each document once."""
    if config.reuse_state == "off" or engine.ask is None:
        return [], rows
    counts = Counter((r.template, r.shared) for r in rows if r.template is not None)
    shared = [r for r in rows if r.template is not None and counts[(r.template, r.shared)] > 1]
    if not shared:
        return [], rows
    ids = {id(r) for r in shared}
    first: dict[tuple, int] = {}
    for r in shared:
        first.setdefault((r.template, r.shared), r.line)
    shared.sort(key=lambda r: (first[(r.template, r.shared)], r.line))
    return shared, [r for r in rows if id(r) not in ids]


def _waves(rows: list[ParsedRow], batch_size: int):
    """Shared rows in waves of whole documents, about ``batch_size`` questions each (a document's
    questions never split across waves, so it is read once)."""
    wave: list[ParsedRow] = []
    for i, row in enumerate(rows):
        wave.append(row)
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        same = nxt is not None and (nxt.template, nxt.shared) == (row.template, row.shared)
        if not same and len(wave) >= batch_size:
            yield wave
            wave = []
    if wave:
        yield wave


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
        "input_hash": row.hash,
    }
    if getattr(gen, "row_seconds", None) is not None:
        out["row_seconds"] = round(float(gen.row_seconds), 6)  # from its batch's start to its answer
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
            "reuse_state": config.reuse_state,
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
    batch_size: int | None = None,
    max_new_tokens: int = 48,
    limit: int | None = None,
    max_prompt_tokens: int | None = None,
    summary: str | os.PathLike | None = None,
    retry_errors: bool = False,
    fit_context: bool = False,
    shard: tuple[int, int] | None = None,
    reuse_state: str = "auto",
    state_cache: str | os.PathLike | None = None,
    state_cache_bytes: int | None = None,
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
        reuse_state=reuse_state,
    )
    engine = engine_for(
        loaded, batch_size=batch_size, state_cache=state_cache, state_cache_bytes=state_cache_bytes
    )
    return score_jsonl(config, engine, on_start=on_start, on_progress=on_progress)
