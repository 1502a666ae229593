"""Task rows through `datasets`: a hub dataset (cached or reachable) or a local JSONL / Parquet file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jrt_prompt.errors import JRTError

from .spec import TaskSpec

LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_local_rows(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a local JSONL or Parquet file, read with `datasets`."""
    import datasets

    path = Path(path)
    if not path.is_file():
        raise JRTError(f"data file {path} does not exist; pass --data with a JSONL or Parquet file")
    builder = LOCAL_SUFFIXES.get(path.suffix.lower())
    if builder is None:
        raise JRTError(f"data file {path} has an unknown suffix; use .jsonl, .json or .parquet")
    if builder == "json":
        check_utf8(path)
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        return [dict(row) for row in ds]  # rows are decoded here: inside the error handling
    except Exception as exc:  # datasets and pyarrow raise many types for unreadable files
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise JRTError(f"data file {path} could not be read as {builder}: {first}") from None


def check_utf8(path: Path, chunk: int = 1 << 20) -> None:
    """Raise a one-line error naming the line and byte of the first non-UTF-8 byte of a text file."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk)
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                # exc.start counts from the bytes the decoder still held from the previous chunk
                held = len(exc.object) - len(data)
                at = offset + exc.start - held
                f.seek(0)
                head = f.read(at)
                bad = exc.object[exc.start] if exc.start < len(exc.object) else 0
                lines = head.count(b"\n") + 1
                raise JRTError(
                    f"data file {path} is not UTF-8 text: byte 0x{bad:02x} on line {lines} "
                    f"(byte {at + 1} of the file); convert the file to UTF-8"
                ) from None
            if not data:
                return
            offset += len(data)


def load_hub_rows(spec: TaskSpec) -> list[dict[str, Any]]:
    """Rows of the task's hub dataset, from the local cache or the hub."""
    import datasets

    if spec.hub_id is None:
        raise JRTError(f"task {spec.name} has no hub dataset; pass --data {spec.name}=PATH")
    from jrt_prompt.hub import offline_unless_reachable

    with offline_unless_reachable() as online:
        try:
            ds = datasets.load_dataset(spec.hub_id, spec.hub_config, split=spec.split)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            where = "neither cached nor reachable" if online else "not cached, and the hub is off or unreachable"
            raise JRTError(
                f"task {spec.name}: dataset {spec.hub_id} is {where} ({first}); pass --data "
                f"{spec.name}=PATH with a JSONL/Parquet file holding the fields {', '.join(spec.fields)}"
            ) from None
    return [dict(row) for row in ds]


def check_rows(spec: TaskSpec, rows: list[dict[str, Any]], repeat: int, source: str) -> None:
    """Every row has the fields the task's prompt needs, with usable types."""
    needed = spec.required_fields(repeat)
    for index, row in enumerate(rows):
        missing = [name for name in needed if row.get(name) is None]
        if missing:
            raise JRTError(
                f"{source} row {index + 1} lacks field(s) {', '.join(missing)} needed by task {spec.name} "
                f"(repeat={repeat}); add them or pick another task"
            )
        for name in needed:
            value = row[name]
            if name == "answers":
                ok = isinstance(value, str) or (
                    isinstance(value, list | tuple) and all(isinstance(a, str) for a in value)
                )
                expected = "a string or a list of strings"
            else:
                ok = isinstance(value, str)
                expected = "a string"
            if not ok:
                raise JRTError(
                    f"{source} row {index + 1}: field {name!r} must be {expected}, got {type(value).__name__}"
                )


def load_task_rows(
    spec: TaskSpec, data: str | Path | None = None, limit: int | None = None
) -> tuple[list[dict[str, Any]], str]:
    """The task's rows (first ``limit`` of them) and a description of where they came from."""
    if spec.extra.get("loader") is not None and data is None:
        rows, source = spec.extra["loader"](limit)
    elif data is not None:
        rows, source = load_local_rows(data), str(data)
    else:
        rows, source = load_hub_rows(spec), f"{spec.hub_id}:{spec.split}"
    if limit is not None and limit >= 0:
        rows = rows[:limit]
    return rows, source
