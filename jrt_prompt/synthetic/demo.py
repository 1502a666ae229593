"""Package a trained kv-docs model as the shipped demo model (``jrt_prompt/demo/``).

The demo folder is an ordinary checkpoint folder: ``config.json`` + ``model.safetensors`` (from
``save_pretrained``), the byte-level tokenizer files, ``kv_docs_heldout.jsonl`` (held-out documents
that ``jrt eval --task kv-docs`` reads) and ``training.json`` (how it was trained and scored).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import JRTError
from ..tokenization import build_byte_tokenizer
from .kv_docs import kv_docs_examples, write_jsonl

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo"
HELD_OUT_SEED = 1234  # the seed `jrt eval --task kv-docs` falls back to when no file ships
HELD_OUT_ROWS = 200
MAX_BYTES = 20_000_000


def package_demo(checkpoint: str | Path, dest: str | Path = DEMO_DIR, *, rows: int = HELD_OUT_ROWS) -> Path:
    """Copy a ``run_job`` checkpoint into ``dest`` with tokenizer and held-out data."""
    checkpoint, dest = Path(checkpoint), Path(dest)
    weights = checkpoint / "model.safetensors"
    if not (checkpoint / "config.json").is_file() or not weights.is_file():
        raise JRTError(f"{checkpoint} is not a saved model (config.json + model.safetensors expected)")
    if weights.stat().st_size > MAX_BYTES:
        raise JRTError(
            f"{weights} is {weights.stat().st_size / 1e6:.1f} MB; the shipped demo must stay under 20 MB"
        )
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, dest / name)
    build_byte_tokenizer().save_pretrained(dest)
    result = checkpoint / "result.json"
    info = json.loads(result.read_text()) if result.is_file() else {}
    # Held-out documents drawn like the training ones (sizes, field names), from another seed.
    options = info.get("config", {}).get("task_options", {})
    shape = {key: options[key] for key in ("min_fields", "max_fields", "field_names") if key in options}
    write_jsonl(kv_docs_examples(rows, HELD_OUT_SEED, **shape), dest / "kv_docs_heldout.jsonl")
    if info:
        info.pop("history", None)
        (dest / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    return dest
