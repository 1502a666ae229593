"""Read a document once, answer many questions: reuse of a model's state after a shared prefix.

A recurrent model's state after reading a document is small and constant, whatever the
document's length. With a *context-first* layout (``context × k``, then the question; see
:meth:`jrt_prompt.prompts.JRTPrompt.context_first`) everything before the question is the same
for every question of a document, so the model reads it once (:func:`read_document`) and each
question continues from a copy of that state (:meth:`DocumentState.ask`).

How a question continues the state: one token at a time through the family's decode step, for
every family: the decode engine's one-step decoder, a CUDA graph on a GPU, is replayed with the
question's tokens forced (:meth:`DecodeEngine.continue_rows`). transformers' Mamba-1 / Falcon-Mamba mixers
restart their scan from zero when a second multi-token forward runs on a cache (only the conv
state is carried), so a multi-token continuation would be wrong there; JRT-RNN's own forward
continues a cache one token at a time as well, so later tokens never enter the encoder part of
prefix linear attention. Stepping is therefore the one rule, and it is what makes a reused answer
token-identical to the answer of the whole prompt (tests/test_reuse.py, fp32). The questions of
a batch, from one or several documents, step together (the states stacked along the batch, the
questions aligned at their end, a row's state held until its question starts), then decode
together in the engine.

JRT-RNN: prefix linear attention reads the first ``enc_length`` prompt tokens non-causally. A
reused state holds the encoder over the document (its first ``enc_length`` tokens); the question
is read causally. When the prefix has at least ``enc_length`` tokens this is exactly what the
whole prompt gives; for a shorter prefix the whole prompt would let the encoder see the question
too, so the reused state is a different (the reusable) layout.

Models whose cache grows with the sequence (Transformers) reuse transformers' own KV cache of the
prefix: each question gets a deep copy of it (``DynamicCache``) and transformers' ``generate``
reads only the question; their questions run one at a time.

A state is saved in ``safetensors`` with the model's name, config hash, weights fingerprint,
layout, document hash and token count in its metadata; :meth:`DocumentState.load` refuses a
state that does not match the model or the layout asked for, with one line.

This is a function of the generation layer, not a method of ``LoadedModel``: the models layer
imports nothing above it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import JRTArgumentError, JRTError, ReuseUnsupported
from .batching import CPU_BATCH_SIZE
from .engine import DecodeEngine
from .families import StateFamily, family_of, flatten, unflatten
from .hf import greedy_transformers, output_cache
from .result import Generation, finish, pad_token_id

# 2: JRT-RNN's sliding-window layers keep a ring of window + 1 slots (was window); a state file of
# version 1 is refused with one line, and a state cache reads the document again.
FORMAT = "jrt-document-state/2"
KV_FAMILY = "transformers-kv"  # transformers' prefix KV cache (a model without a constant state)
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype")


@dataclass(frozen=True)
class ContextFirst:
    """The reusable prompt layout: ``(context + separator) × repeat``, then the question and the
    answer prefix — what :meth:`jrt_prompt.prompts.JRTPrompt.render` writes with
    ``question_first=False`` (the prompts layer sits above this one, so the rule is stated here
    too; tests/test_reuse.py checks that both agree)."""

    repeat: int = 2
    separator: str = "\n"
    answer_prefix: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.repeat, bool) or not isinstance(self.repeat, int) or self.repeat < 1:
            raise JRTArgumentError(
                f"repeat={self.repeat!r} is invalid: the context must be shown at least once"
            )
        if not isinstance(self.separator, str) or not isinstance(self.answer_prefix, str):
            raise JRTArgumentError("separator and answer_prefix must be strings")

    @property
    def layout(self) -> str:
        return "context-first"

    def prefix(self, context: str) -> str:
        if not isinstance(context, str):
            raise JRTArgumentError(f"context must be a string, got {type(context).__name__}")
        return (context + self.separator) * self.repeat

    def suffix(self, question: str) -> str:
        if not isinstance(question, str) or not question.strip():
            raise JRTArgumentError("question is empty: pass the question to ask about the context")
        return question + self.answer_prefix


def as_layout(prompt) -> ContextFirst:
    """The :class:`ContextFirst` layout of ``prompt`` (a ContextFirst, or a templater such as
    :class:`~jrt_prompt.prompts.JRTPrompt` with ``question_first=False``); a question-first prompt
    is refused: its state depends on the question from the first token."""
    if isinstance(prompt, ContextFirst):
        return prompt
    if getattr(prompt, "question_first", None):
        raise JRTArgumentError(
            "prompt puts the question first, so its state cannot be shared between questions: "
            "use JRTPrompt.context_first(repeat)"
        )
    try:
        return ContextFirst(prompt.repeat, prompt.separator, prompt.answer_prefix)
    except AttributeError:
        raise JRTArgumentError(
            f"prompt {prompt!r} is not a prompt layout: pass a JRTPrompt with question_first=False"
        ) from None


class StateMismatchError(JRTError):
    """A saved document state does not belong to the model or layout it is used with."""


def config_hash(model) -> str:
    """A short hash of the model's config (architecture and sizes, not its path or version)."""
    config = model.config.to_dict()
    for key in _VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_fingerprint(model) -> str:
    """A short hash of a few weights (the first values of the first and last parameters), so that
    two checkpoints of one architecture are told apart without hashing every weight."""
    params = list(model.parameters())
    digest = hashlib.sha256()
    for p in (params[0], params[-1]) if params else ():
        digest.update(str(tuple(p.shape)).encode())
        digest.update(p.detach().reshape(-1)[:1024].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def document_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _model_name(model, name: str | None) -> str:
    if name:
        return name
    return str(getattr(model.config, "_name_or_path", "") or type(model).__name__)


def _unpack(loaded_or_model) -> tuple[Any, Any, str | None, bool | None]:
    """(model, tokenizer, name, supports_left_padding) from a LoadedModel or (model, tokenizer)."""
    if isinstance(loaded_or_model, tuple):
        if len(loaded_or_model) != 2:
            raise JRTArgumentError("pass a LoadedModel or a (model, tokenizer) pair")
        model, tokenizer = loaded_or_model
        return model, tokenizer, None, None
    model = getattr(loaded_or_model, "model", None)
    tokenizer = getattr(loaded_or_model, "tokenizer", None)
    if model is None or tokenizer is None:
        raise JRTArgumentError("pass a LoadedModel or a (model, tokenizer) pair")
    adapter = getattr(loaded_or_model, "adapter", None)
    return (
        model,
        tokenizer,
        getattr(loaded_or_model, "name", None),
        getattr(adapter, "supports_left_padding", None),
    )


@dataclass
class _Reader:
    """One model with what reuse needs of it (shared by its document states)."""

    model: Any
    tokenizer: Any
    name: str
    family: StateFamily | None
    config_hash: str
    weights: str
    pad_id: int

    @property
    def family_name(self) -> str:
        return self.family.name if self.family is not None else KV_FAMILY

    def engine(self, max_prefill_tokens: int | None = None) -> DecodeEngine:
        engine = DecodeEngine(self.model, self.tokenizer, self.family, max_prefill_tokens=max_prefill_tokens)
        engine.pad_id = self.pad_id
        return engine


def _reader(loaded_or_model, name: str | None = None) -> _Reader:
    model, tokenizer, loaded_name, padding = _unpack(loaded_or_model)
    family = family_of(model)
    if padding is None:
        padding = getattr(model.config, "model_type", "") != "rwkv"
    if family is not None and not padding and family.masks_padding:
        family = replace(family, masks_padding=False)
    return _Reader(
        model,
        tokenizer,
        _model_name(model, name or loaded_name),
        family,
        config_hash(model),
        weights_fingerprint(model),
        pad_token_id(tokenizer),
    )


def _check_kv(reader: _Reader, cache):
    """``cache`` when it is transformers' plain growing KV cache (a DynamicCache of full-attention
    layers), the only kind whose prefix copy is known to continue correctly; else
    :class:`ReuseUnsupported`."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    layers = getattr(cache, "layers", None)
    if (
        not isinstance(cache, DynamicCache)
        or not layers
        or any(type(layer) is not DynamicLayer for layer in layers)
    ):
        raise ReuseUnsupported(
            f"{reader.name} keeps a {type(cache).__name__} whose state cannot be copied for reuse: "
            "answer each question from its whole prompt (reuse_state='off')"
        )
    return cache


def _kv_tree(cache) -> list:
    return [[layer.keys, layer.values] for layer in cache.layers]


def _kv_set_tree(cache, tree) -> None:
    for layer, (keys, values) in zip(cache.layers, tree, strict=True):
        layer.keys, layer.values = keys, values


@dataclass
class DocumentState:
    """A model's state after reading ``prompt.prefix(context)`` of one document.

    leaves: the state's tensors (batch 1), in the order of the family's cache tree: per-layer SSM
        and conv states, linear-attention sums (JRT-RNN's encoder sums included), sliding windows,
        rotary positions; or a Transformer's per-layer keys and values.
    tokens: tokens of the prefix (the document read ``repeat`` times, with separators).
    """

    reader: _Reader
    prompt: ContextFirst
    template: Any  # a cache object of this model: the structure the leaves are put back into
    leaves: list[torch.Tensor]
    tokens: int
    document_hash: str
    prefix_ids: list[int] | None = None  # kept for the KV path (transformers reads prefix + question)

    # -----------------------------------------------------------------------------------------

    @property
    def layout(self) -> str:
        return self.prompt.layout

    @property
    def state_bytes(self) -> int:
        """Bytes of the cached state (what a document costs to keep)."""
        return sum(t.numel() * t.element_size() for t in self.leaves)

    def ask(
        self,
        questions: str | Sequence[str],
        *,
        max_new_tokens: int = 48,
        stop: Sequence[str] | None = ("\n",),
        batch_size: int | None = None,
    ) -> list[Generation]:
        """Greedy answers to ``questions`` from copies of this state (one Generation each, in order;
        ``prompt_tokens`` counts the prefix and the question)."""
        if isinstance(questions, str):
            questions = [questions]
        return ask_many(
            [(self, q) for q in questions], max_new_tokens=max_new_tokens, stop=stop, batch_size=batch_size
        )

    # -----------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, str]:
        prompt = self.prompt
        return {
            "format": FORMAT,
            "model": self.reader.name,
            "config_hash": self.reader.config_hash,
            "weights": self.reader.weights,
            "family": self.reader.family_name,
            "layout": prompt.layout,
            "prompt": json.dumps(
                {
                    "repeat": prompt.repeat,
                    "separator": prompt.separator,
                    "answer_prefix": prompt.answer_prefix,
                }
            ),
            "document_hash": self.document_hash,
            "tokens": str(self.tokens),
            "prefix_ids": json.dumps(self.prefix_ids) if self.prefix_ids is not None else "",
        }

    def save(self, path: str | Path) -> Path:
        """Write the state to ``path`` (safetensors, with :meth:`metadata`)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"leaf.{i:04d}": t.detach().contiguous().cpu() for i, t in enumerate(self.leaves)}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=self.metadata())
        tmp.replace(path)
        return path

    @classmethod
    def load(
        cls,
        path: str | Path,
        loaded_or_model,
        *,
        prompt: Any | None = None,
        document: str | None = None,
        name: str | None = None,
    ) -> DocumentState:
        """A saved state, for ``loaded_or_model`` (a LoadedModel or (model, tokenizer)).

        Refused (:class:`StateMismatchError`, one line) when the state was read by another model
        (name, config, weights), in another layout than ``prompt`` (when given), from another
        document than ``document`` (when given), or holds tensors the model's cache cannot take.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise JRTArgumentError(f"state file {path} does not exist: save one with DocumentState.save")
        reader = _reader(loaded_or_model, name)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                keys = sorted(f.keys())
                leaves = [f.get_tensor(k) for k in keys]
        except Exception as exc:  # not a safetensors file, or a torn one
            raise JRTArgumentError(
                f"state file {path} is not a readable safetensors file ({exc}): save it again"
            ) from exc
        if meta.get("format") != FORMAT:
            raise StateMismatchError(
                f"state file {path} is not a document state of this version: read the document again"
            )
        for key, want, what in (
            ("model", reader.name, "model"),
            ("config_hash", reader.config_hash, "config"),
            ("weights", reader.weights, "weights"),
            ("family", reader.family_name, "state family"),
        ):
            if meta.get(key) != want:
                raise StateMismatchError(
                    f"state file {path} was read by another {what} ({meta.get('model')!r}, {key} "
                    f"{meta.get(key)!r}, not {want!r}): read the document again with this model"
                )
        fields = json.loads(meta["prompt"])
        saved = ContextFirst(fields["repeat"], fields["separator"], fields["answer_prefix"])
        if prompt is not None and as_layout(prompt) != saved:
            raise StateMismatchError(
                f"state file {path} holds layout {saved.layout} repeat={saved.repeat} (separator "
                f"{saved.separator!r}), not {as_layout(prompt).layout} repeat={prompt.repeat} (separator "
                f"{prompt.separator!r}): read the document again in this layout"
            )
        if document is not None and document_hash(document) != meta["document_hash"]:
            raise StateMismatchError(f"state file {path} holds another document: read this document again")
        tokens = int(meta["tokens"])
        prefix_ids = json.loads(meta["prefix_ids"]) if meta.get("prefix_ids") else None
        device = next(reader.model.parameters()).device
        template = _template(reader, tokens, prefix_ids)
        expected = flatten(_tree(reader, template))
        if len(expected) != len(leaves) or any(
            _shape_key(reader, a) != _shape_key(reader, b) for a, b in zip(expected, leaves, strict=True)
        ):
            raise StateMismatchError(
                f"state file {path} holds {len(leaves)} tensors that do not fit this model's cache "
                f"({len(expected)} tensors): read the document again with this model"
            )
        leaves = [t.to(device) for t in leaves]
        return cls(reader, saved, template, leaves, tokens, meta["document_hash"], prefix_ids)


def _shape_key(reader: _Reader, t: torch.Tensor) -> tuple:
    shape = tuple(t.shape)
    if reader.family is None and len(shape) >= 2:  # a KV cache's length is the document's
        shape = shape[:-2] + shape[-1:]
    return (shape, t.dtype)


def _tree(reader: _Reader, cache):
    return reader.family.tree(cache) if reader.family is not None else _kv_tree(cache)


def _set_tree(reader: _Reader, cache, tree) -> None:
    if reader.family is not None:
        reader.family.set_tree(cache, tree)
    else:
        _kv_set_tree(cache, tree)


def _template(reader: _Reader, tokens: int, prefix_ids: list[int] | None):
    """A cache object of ``reader``'s model, to put a loaded state's tensors into: the cache of a
    one-token prefill (its shapes are a document's, the sequence length of a KV cache aside)."""
    device = next(reader.model.parameters()).device
    probe = torch.tensor([[prefix_ids[0] if prefix_ids else reader.pad_id]], device=device)
    with torch.inference_mode():
        if reader.family is not None:
            _, cache = reader.family.prefill(reader.model, probe, None)
        else:
            cache = _check_kv(reader, output_cache(reader.model(input_ids=probe, use_cache=True)))
    if hasattr(cache, "seen_tokens"):  # JRTCache: a continued cache, not a fresh one
        cache.seen_tokens = tokens
    return cache


def _cache_with(reader: _Reader, template, leaves: list[torch.Tensor]):
    """A new cache object of ``template``'s structure holding ``leaves`` (not shared)."""
    old = flatten(_tree(reader, template))
    cache = copy.deepcopy(template, memo={id(t): t for t in old})
    _set_tree(reader, cache, unflatten(_tree(reader, template), leaves))
    return cache


def read_document(
    loaded_or_model,
    context: str | Sequence[str],
    repeat: int | None = None,
    *,
    prompt: Any | None = None,
    name: str | None = None,
    max_prefill_tokens: int | None = None,
) -> DocumentState | list[DocumentState]:
    """Read ``prompt.prefix(context)`` once (default prompt: ``JRTPrompt.context_first(repeat)``,
    repeat 2 by default).

    loaded_or_model: a :class:`~jrt_prompt.models.loading.LoadedModel` or a (model, tokenizer) pair.
    context: one document, or a list of documents (read in length-grouped batches; a list of
        states comes back).
    prompt: the layout; it must be reusable (context-first): a question-first prompt is refused.
    name: the model's name in a saved state's metadata (default: the LoadedModel's name, else the
        config's ``_name_or_path``).
    """
    if prompt is None:
        prompt = ContextFirst(2 if repeat is None else repeat)
    else:
        prompt = as_layout(prompt)
        if repeat is not None and prompt.repeat != repeat:
            raise JRTArgumentError(
                f"repeat={repeat} and prompt.repeat={prompt.repeat} differ: pass one of them"
            )
    single = isinstance(context, str)
    contexts = [context] if single else list(context)
    reader = _reader(loaded_or_model, name)
    texts = [prompt.prefix(c) for c in contexts]
    encoded = [reader.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise JRTArgumentError(f"context {i} is empty: give every document some text")
    states: list[DocumentState | None] = [None] * len(contexts)
    with torch.inference_mode():
        if reader.family is not None:
            engine = reader.engine(max_prefill_tokens)
            order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
            _, groups = engine._prefill([encoded[i] for i in order])
            for group, cache in groups:
                group_leaves = flatten(reader.family.tree(cache))
                for r, j in enumerate(group):
                    i = order[j]
                    leaves = [leaf[r : r + 1].clone() for leaf in group_leaves]
                    states[i] = DocumentState(
                        reader, prompt, cache, leaves, len(encoded[i]), document_hash(contexts[i])
                    )
        else:
            device = next(reader.model.parameters()).device
            for i, ids in enumerate(encoded):
                cache = _check_kv(
                    reader,
                    output_cache(reader.model(input_ids=torch.tensor([ids], device=device), use_cache=True)),
                )
                leaves = flatten(_kv_tree(cache))
                states[i] = DocumentState(
                    reader, prompt, cache, leaves, len(ids), document_hash(contexts[i]), ids
                )
    return states[0] if single else states  # type: ignore[return-value]


def ask_many(
    pairs: Sequence[tuple[DocumentState, str]],
    *,
    max_new_tokens: int = 48,
    stop: Sequence[str] | None = ("\n",),
    batch_size: int | None = None,
) -> list[Generation]:
    """Greedy answers to (document state, question) pairs, in order. The questions of a batch
    step together from their stacked states, then decode together, in batches of ``batch_size``
    (default 8 on CPU, 32 on a GPU); a batch gives the answers each question gets alone."""
    if max_new_tokens < 1:
        raise JRTArgumentError(f"max_new_tokens={max_new_tokens} is invalid: generate at least one token")
    if batch_size is not None and batch_size < 1:
        raise JRTArgumentError(f"batch_size={batch_size} is invalid: use a positive batch size")
    if not pairs:
        return []
    reader = pairs[0][0].reader
    if any(state.reader.model is not reader.model for state, _ in pairs):
        raise JRTArgumentError("the document states of one ask_many call must come from one model")
    encoded = []
    for state, question in pairs:
        ids = reader.tokenizer(state.prompt.suffix(question), add_special_tokens=False)["input_ids"]
        if not ids:
            raise JRTArgumentError(f"question {question!r} has no tokens: ask a non-empty question")
        encoded.append(ids)
    if reader.family is None:
        return [
            _ask_kv(state, ids, max_new_tokens, stop) for (state, _), ids in zip(pairs, encoded, strict=True)
        ]
    device = next(reader.model.parameters()).device
    if batch_size is None:
        batch_size = CPU_BATCH_SIZE if device.type != "cuda" else 32
    results: list[Generation | None] = [None] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: (-len(encoded[i]), i))
    engine = reader.engine()
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        started = time.perf_counter()
        with torch.inference_mode():
            states = [pairs[i][0] for i in batch]
            leaves = [
                torch.cat([st.leaves[k] for st in states]) for k in range(len(states[0].leaves))
            ]
            cache = _cache_with(reader, states[0].template, leaves)
            first, continued = engine.continue_rows(
                cache, [encoded[i] for i in batch], slots_limit=batch_size, pad_id=reader.pad_id
            )
            prefilled = [(list(range(len(batch))), _cache_with(reader, cache, continued))]
            gens = engine.decode_prefilled(
                first,
                prefilled,
                [pairs[i][0].tokens + len(encoded[i]) for i in batch],
                max_new_tokens=max_new_tokens,
                stop=stop,
                slots_limit=batch_size,
                started=started,
            )
        for i, gen in zip(batch, gens, strict=True):
            results[i] = gen
    return results  # type: ignore[return-value]


def _ask_kv(state: DocumentState, question_ids: list[int], max_new_tokens: int, stop) -> Generation:
    """One question from a copy of a Transformer's prefix KV cache, through transformers' generate."""
    reader = state.reader
    device = next(reader.model.parameters()).device
    cache = _cache_with(reader, state.template, [t.clone() for t in state.leaves])
    ids = list(state.prefix_ids or []) + question_ids
    input_ids = torch.tensor([ids], device=device)
    started = time.perf_counter()
    out, finished_at = greedy_transformers(
        reader.model,
        reader.tokenizer,
        input_ids,
        torch.ones_like(input_ids),
        max_new_tokens,
        stop,
        reader.pad_id,
        started,
        past_key_values=cache,
    )
    seconds = time.perf_counter() - started
    return finish(
        reader.tokenizer,
        out[0, len(ids) :].tolist(),
        len(ids),
        seconds,
        stop,
        max_new_tokens,
        row_seconds=finished_at.get(0, seconds),
    )


# --------------------------------------------------------------------------------------------
# States on disk across runs


DEFAULT_STATE_CACHE_BYTES = 1 << 30  # 1 GiB


class StateCache:
    """Document states kept in a directory across runs, keyed by model and document, at most
    ``max_bytes`` in all: the least recently used files are deleted first (a file's use time is
    its modification time, touched on every hit)."""

    def __init__(self, directory: str | Path, max_bytes: int = DEFAULT_STATE_CACHE_BYTES):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise JRTArgumentError(
                f"max_bytes={max_bytes!r} is invalid: give the state cache a positive size in bytes"
            )
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise JRTArgumentError(f"state cache {self.directory} is a file: pass a directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(reader: _Reader, prompt, context: str) -> str:
        prompt = as_layout(prompt)
        parts = [
            reader.name,
            reader.config_hash,
            reader.weights,
            prompt.layout,
            str(prompt.repeat),
            prompt.separator,
            prompt.answer_prefix,
            document_hash(context),
        ]
        return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def get(self, loaded_or_model, prompt, context: str, *, name: str | None = None) -> DocumentState | None:
        reader = _reader(loaded_or_model, name)
        path = self.path(self.key(reader, prompt, context))
        if not path.is_file():
            self.misses += 1
            return None
        try:
            state = DocumentState.load(path, loaded_or_model, prompt=prompt, document=context, name=name)
        except JRTError:  # torn or foreign: read the document again and overwrite it
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        self.hits += 1
        return state

    def put(self, state: DocumentState, context: str) -> Path:
        path = self.path(self.key(state.reader, state.prompt, context))
        state.save(path)
        self.evict(keep=path)
        return path

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("*.safetensors"))

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def evict(self, keep: Path | None = None) -> None:
        """Delete the least recently used states until the cache fits its size (``keep`` last)."""
        entries = []
        for p in self.files():
            with contextlib.suppress(OSError):
                st = p.stat()
                entries.append((p == keep, st.st_mtime_ns, p, st.st_size))
        total = sum(e[3] for e in entries)
        for _, _, p, size in sorted(entries):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                p.unlink()
                total -= size


def read_documents_cached(
    loaded_or_model,
    prompt,
    contexts: Sequence[str],
    cache: StateCache | None = None,
    *,
    name: str | None = None,
) -> tuple[list[DocumentState], int]:
    """States of ``contexts`` (taken from ``cache`` where it has them, read and stored otherwise);
    returns (states, documents read now)."""
    prompt = as_layout(prompt)
    states: list[DocumentState | None] = [None] * len(contexts)
    missing = []
    for i, context in enumerate(contexts):
        if cache is not None:
            states[i] = cache.get(loaded_or_model, prompt, context, name=name)
        if states[i] is None:
            missing.append(i)
    if missing:
        fresh = read_document(
            loaded_or_model, [contexts[i] for i in missing], prompt.repeat, prompt=prompt, name=name
        )
        for i, state in zip(missing, fresh, strict=True):
            states[i] = state
            if cache is not None:
                cache.put(state, contexts[i])
    return states, len(missing)  # type: ignore[return-value]
