"""``load_model``: find a checkpoint, pick its adapter, build the model and its tokenizer.

Where a model is looked for, in order:
1. the argument itself, when it is a local directory;
2. ``$JRT_MODELS_DIR/<short name>``, ``$JRT_MODELS_DIR/<org>/<repo>`` and ``$JRT_MODELS_DIR/<repo>``;
3. the Hugging Face cache (read offline);
4. the hub, unless ``HF_HUB_OFFLINE=1`` (then nothing is downloaded).
When nothing is found the error names the model, every place searched, and how to pass a local path.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..errors import JRTError, ModelNotFoundError, UnsupportedModelError
from ..hub import PROBE_TIMEOUT_S, endpoint, hub_reachable
from ..hub import hub_allowed as _hub_allowed
from ..kernels.dispatch import kernel_choice
from .accelerate import accelerate
from .adapters.base import Adapter
from .checkpoint import (
    check_checkpoint,
    has_weights,
    list_files,
    read_config,
    resolve_device,
    resolve_dtype,
)
from .registry import ModelSpec, get_spec, suggest

# Adapters tried, in order, for a checkpoint not in the roster; "hf" accepts any transformers model.
DETECTION_ORDER = (
    "hazy_jrt",
    "hazy_gpt",
    "hazy_attention",
    "hazy_mamba",
    "mamba",
    "mamba2",
    "fla",
    "rwkv",
    "hf",
)

_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.tiktoken"]
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@dataclass
class LoadedModel:
    """A model ready for generation, with what is known about it."""

    model: Any
    tokenizer: Any
    name: str
    path: Path
    adapter: Adapter
    spec: ModelSpec | None
    config: dict[str, Any]
    device: torch.device

    @property
    def family(self) -> str:
        return self.spec.family if self.spec else self.adapter.family

    def state_bytes(self, prompt_tokens: int, dtype_bytes: int = 2) -> int:
        """Bytes of recurrent state (or KV cache) one sequence holds after ``prompt_tokens`` tokens."""
        return self.adapter.state_bytes(self.config, prompt_tokens, dtype_bytes)

    def token_limit(self) -> int | None:
        """Positions the model can read, from its config (None when it declares none, as recurrent models).

        The tokenizer's ``model_max_length`` is not used: it describes the model the tokenizer came
        with (GPT-2's says 1024 for checkpoints trained on 2048 tokens and for recurrent models).
        """
        limits = [
            value
            for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
            if isinstance(value := self.config.get(key), int) and value > 0
        ]
        return min(limits) if limits else None


def get_adapter(name: str) -> Adapter:
    """The adapter module ``jrt_prompt.models.adapters.<name>``'s ``ADAPTER``."""
    if not name.isidentifier():
        raise JRTError(f"adapter name {name!r} is invalid")
    try:
        module = importlib.import_module(f"jrt_prompt.models.adapters.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"jrt_prompt.models.adapters.{name}":
            raise UnsupportedModelError(
                f"models of adapter {name!r} are not yet supported by this version"
            ) from None
        raise
    return module.ADAPTER


def detect_adapter(config: dict[str, Any], files: set[str]) -> Adapter:
    for name in DETECTION_ORDER:
        try:
            adapter = get_adapter(name)
        except UnsupportedModelError:
            continue
        try:
            matches = adapter.detect(config, files)
        except (AttributeError, TypeError, ValueError, KeyError) as exc:
            raise JRTError(
                f"config.json has a field of the wrong type for a {adapter.family} model "
                f"({type(exc).__name__}: {str(exc)[:120]}); fix or re-download it"
            ) from None
        if matches:
            return adapter
    raise UnsupportedModelError(
        "config.json matches no known model family (no model_type, and not a mamba_ssm or hazyresearch config)"
    )


def package_dir(package: str) -> Path:
    return Path(str(resources.files("jrt_prompt") / package))


def locate(name_or_path: str | os.PathLike, *, allow_hub: bool = True) -> tuple[Path, ModelSpec | None]:
    """Find the checkpoint directory of a roster name, hub id or local path."""
    text = str(name_or_path)
    local = Path(text).expanduser()
    if local.is_dir():
        return local, get_spec(text)
    spec = get_spec(text)
    if spec is None:
        if _looks_like_path(text):
            raise ModelNotFoundError(
                f"{text} is not a directory: pass the directory that holds config.json and the weights"
            )
        if "/" not in text:
            hint = suggest(text)
            also = f" (did you mean {', '.join(hint)}?)" if hint else ""
            raise ModelNotFoundError(
                f"unknown model {text!r}{also}: use a name from `jrt models`, a hub id (org/name) or a local directory"
            )
    if spec is not None and spec.package:
        path = package_dir(spec.package)
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"model {text!r} should ship in {path}, which is missing: reinstall jrt-prompt"
            )
        return path, spec
    repos = spec.hub_ids if spec else (text,)
    searched: list[str] = []
    for candidate in _models_dir_candidates(spec.name if spec else None, repos):
        searched.append(str(candidate))
        if (candidate / "config.json").is_file():
            return candidate, spec
    for repo in repos:
        path = _from_hf_cache(repo)
        searched.append(f"HF cache ({repo})")
        if path is not None:
            return path, spec
    if allow_hub and _hub_allowed() and not hub_reachable():
        searched.append(f"hub unreachable ({_hub_endpoint()}: no answer in {_PROBE_TIMEOUT_S:.0f} s)")
    elif allow_hub and _hub_allowed():
        for repo in repos:
            path, why = _from_hub(repo)
            searched.append(f"hub ({repo}: {why})" if why else f"hub ({repo})")
            if path is not None:
                return path, spec
    else:
        searched.append("hub skipped (HF_HUB_OFFLINE=1)" if allow_hub else "hub not asked")
    name = spec.name if spec else text
    raise ModelNotFoundError(
        f"no local weights for model {name!r}; searched {'; '.join(searched)}. "
        f"Download {repos[0]} on a machine with access and pass its directory as the model "
        "(--model DIR, load_model(DIR)) or set JRT_MODELS_DIR"
    )


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith((".", "/", "~")) or os.sep in text.strip("/").split("/", 1)[-1] or text.count("/") > 1
    )


def _models_dir_candidates(short: str | None, repos: tuple[str, ...]) -> list[Path]:
    root = os.environ.get("JRT_MODELS_DIR")
    if not root:
        return []
    base = Path(root).expanduser()
    out = [base / short] if short else []
    for repo in repos:
        out += [base / repo, base / repo.split("/")[-1]]
    return list(dict.fromkeys(out))  # a short name equal to the repo name is searched once


_PROBE_TIMEOUT_S = PROBE_TIMEOUT_S
_hub_endpoint = endpoint


def _has_any(path: Path, names: tuple[str, ...]) -> bool:
    return any((path / name).is_file() for name in names)


def _from_hf_cache(repo: str, wanted: tuple[str, ...] = ("config.json",)) -> Path | None:
    """The cached snapshot of ``repo`` if it holds one of the ``wanted`` files (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo, local_files_only=True))
    except Exception:
        return None
    return path if _has_any(path, wanted) else None


def _from_hub(
    repo: str, patterns: list[str] = _WEIGHT_PATTERNS, wanted: tuple[str, ...] = ("config.json",)
) -> tuple[Path | None, str]:
    """Download ``repo``'s files matching ``patterns``; (path, "") or (None, why not)."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as exc:
        return None, type(exc).__name__
    return (path, "") if _has_any(path, wanted) else (None, f"no {wanted[0]}")


def load_tokenizer(path: Path, fallback: str | None):
    """The tokenizer saved with the checkpoint, else the family's tokenizer (found like a model)."""
    from transformers import AutoTokenizer

    if _has_any(path, _TOKENIZER_FILES):
        source = path
    elif fallback:
        source = _locate_tokenizer(fallback)
    else:
        raise JRTError(
            f"{path} has no tokenizer files and its family names none: save the tokenizer into that directory"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except JRTError:
        raise
    except Exception as exc:  # a corrupt tokenizer.json and the like
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise JRTError(
            f"the tokenizer files in {source} could not be read ({type(exc).__name__}: {first}); re-download them"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _locate_tokenizer(repo: str) -> Path:
    """A tokenizer repo, looked for like a model: JRT_MODELS_DIR, the HF cache, then the hub."""
    searched = []
    for candidate in _models_dir_candidates(None, (repo,)):
        searched.append(str(candidate))
        if _has_any(candidate, _TOKENIZER_FILES):
            return candidate
    searched.append(f"HF cache ({repo})")
    path = _from_hf_cache(repo, _TOKENIZER_FILES)
    if path is not None:
        return path
    if _hub_allowed() and not hub_reachable():
        searched.append("hub unreachable")
    elif _hub_allowed():
        path, why = _from_hub(repo, ["*.json", "*.txt", "*.model"], _TOKENIZER_FILES)
        if path is not None:
            return path
        searched.append(f"hub ({why})")
    raise ModelNotFoundError(
        f"no local copy of tokenizer {repo!r}; searched {'; '.join(searched)}. "
        "Save it with AutoTokenizer.save_pretrained into the model directory or under JRT_MODELS_DIR"
    )


def load_model(
    name_or_path: str | os.PathLike,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = None,
) -> LoadedModel:
    """Load a roster model, hub id or local checkpoint directory, with its tokenizer.

    Returns a :class:`LoadedModel`; ``.model`` is a transformers ``PreTrainedModel`` in eval mode.
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    check_device(name_or_path, dev)
    path, spec = locate(name_or_path)
    config = read_config(path)
    files = list_files(path)
    adapter = get_adapter(spec.adapter) if spec else detect_adapter(config, files)
    if not has_weights(path):
        raise ModelNotFoundError(
            f"{path} holds config.json but no weights (model.safetensors or pytorch_model.bin): download the weight files too"
        )
    check_checkpoint(path, config)  # symlinks and shards inside, weight files readable, sizes plausible
    try:
        model = adapter.load(path, config, dev, torch_dtype)
    except JRTError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise JRTError(
            f"{path}: the checkpoint could not be loaded ({type(exc).__name__}: {first}); re-download it"
        ) from None
    if dev.type == "cuda" or kernel_choice() != "auto":
        # this project's kernels in place of transformers' PyTorch fallbacks (Mamba families)
        accelerate(model)
    tokenizer = load_tokenizer(path, (spec.tokenizer if spec else None) or adapter.default_tokenizer)
    name = spec.name if spec else str(name_or_path)
    return LoadedModel(model, tokenizer, name, path, adapter, spec, config, dev)


def check_device(name_or_path: str | os.PathLike, device: torch.device) -> None:
    """A roster model whose family runs on a CUDA GPU only fails here, before any search or download."""
    spec = get_spec(str(name_or_path))
    if spec is None or device.type == "cuda":
        return
    adapter = get_adapter(spec.adapter)
    if adapter.needs_gpu:
        raise UnsupportedModelError(
            f"model {spec.name!r} ({spec.family}) runs flash-linear-attention's Triton kernels: it needs a CUDA GPU "
            f"and fla (pip install 'jrt-prompt[gpu]'); device {device} was given"
        )


def find_local(spec: ModelSpec) -> Path | None:
    """The local checkpoint directory of a roster model (never downloads), or None."""
    try:
        return locate(spec.name, allow_hub=False)[0]
    except JRTError:
        return None
