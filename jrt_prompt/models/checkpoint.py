"""Reading checkpoint directories safely: config.json and weights (safetensors or pickle-free .bin).

A checkpoint directory is untrusted input. Before any model is built from it
(:func:`check_checkpoint`):

- every file it names (shard indexes) and every symlink in it must resolve inside it, or inside
  the Hugging Face cache's blob store for a cached snapshot;
- every weight file that will be read must parse: safetensors headers, ``.bin`` pickles with
  ``weights_only=True`` (read onto the meta device, so no tensor data is loaded);
- the sizes config.json declares (layers, vocabulary, widths) must fit the tensors the weight
  files hold, so an absurd config cannot drive memory or time before anything is checked.

Models that transformers builds itself go through :func:`from_pretrained_checked`, which also
builds the model on the meta device first and compares its parameter count with the files'.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import JRTArgumentError, JRTError, UnsupportedModelError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_MAX_CONFIG_BYTES = 16 << 20
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def read_config(path: Path) -> dict[str, Any]:
    """Parse ``config.json`` of a checkpoint directory (data only; nothing in it is executed)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise JRTError(f"{path} has no config.json: point at a checkpoint directory that contains one")
    if file.stat().st_size > _MAX_CONFIG_BYTES:
        raise JRTError(
            f"{file} is {file.stat().st_size:,} bytes, far more than any model config: re-download or fix the file"
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except RecursionError:
        raise JRTError(f"{file} nests too deeply to be a model config; re-download or fix the file") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or an integer of > 4300 digits
        raise JRTError(f"{file} is not valid JSON ({str(exc)[:200]}); re-download or fix the file") from None
    if not isinstance(config, dict):
        raise JRTError(f"{file} must hold a JSON object")
    return config


def list_files(path: Path) -> set[str]:
    return {p.name for p in Path(path).iterdir()} if Path(path).is_dir() else set()


def has_weights(path: Path) -> bool:
    files = list_files(path)
    return any(f in files for f in WEIGHT_FILES + INDEX_FILES)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, from safetensors if present, else from .bin files.

    ``.bin`` files are read with ``torch.load(weights_only=True)``: they may only hold tensors and
    plain containers, never arbitrary pickled objects.
    """
    path = Path(path)
    check_links(path)
    files = list_files(path)
    if "model.safetensors" in files:
        return _read_safetensors(path / "model.safetensors")
    if "model.safetensors.index.json" in files:
        return _read_sharded(path, "model.safetensors.index.json", _read_safetensors)
    if "pytorch_model.bin" in files:
        return _read_bin(path / "pytorch_model.bin")
    if "pytorch_model.bin.index.json" in files:
        return _read_sharded(path, "pytorch_model.bin.index.json", _read_bin)
    raise JRTError(
        f"{path} has no weights (looked for {', '.join(WEIGHT_FILES + INDEX_FILES)}): "
        "download the checkpoint's weight files into that directory"
    )


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(file), device="cpu")
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise JRTError(f"{file} could not be read as safetensors ({exc}); re-download it") from None


def _read_bin(file: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise JRTError(
            f"{file} could not be read with weights_only=True ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "convert it to safetensors or re-download it"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # PyTorch-Lightning checkpoints nest the weights
    if not isinstance(obj, dict):
        raise JRTError(f"{file} does not hold a state dict (found {type(obj).__name__})")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _read_sharded(path: Path, index_name: str, reader) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for shard in shard_files(path, index_name):
        state.update(reader(shard))
    return state


def shard_files(path: Path, index_name: str) -> list[Path]:
    """The shard files an index names, each checked to lie inside the checkpoint directory."""
    index_file = Path(path) / index_name
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
        shards = sorted(set(index["weight_map"].values()))
        if not all(isinstance(name, str) for name in shards):
            raise TypeError("shard names must be strings")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, UnicodeDecodeError) as exc:
        raise JRTError(
            f"{index_file} is not a valid shard index ({str(exc)[:200]}); re-download it"
        ) from None
    roots = allowed_roots(path)
    files = []
    for shard in shards:
        file = Path(path) / shard
        if "\\" in shard or "\0" in shard or Path(shard).is_absolute() or ".." in Path(shard).parts:
            raise JRTError(
                f"{index_file} names a shard outside the directory ({shard[:200]!r}): the index was "
                "tampered with; re-download the checkpoint"
            )
        if not _inside(file, roots):
            raise JRTError(
                f"{index_file} names shard {shard[:200]!r}, which resolves to {file.resolve()} outside "
                f"{path}: copy the shard into the directory"
            )
        if not file.is_file():
            raise JRTError(f"{index_file} names shard {shard[:200]!r}, which is missing: download it too")
        files.append(file)
    return files


# --- checking a checkpoint directory before anything is built from it -------------------------

# Layer counts of the original (mamba_ssm, hazyresearch) configs, which have no model_type.
_LAYER_FIELDS = ("n_layer", "num_hidden_layers", "num_layers")
_LAYER_KEY = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
_MAX_ENTRIES = 10_000  # entries of a checkpoint directory looked at for symlinks


def allowed_roots(path: Path) -> list[Path]:
    """Where the files of a checkpoint directory may live: the directory itself and, for a snapshot
    of the Hugging Face cache (``models--org--name/snapshots/REV``), that repo's blob store."""
    roots = [Path(path).resolve()]
    for candidate in (Path(os.path.abspath(path)), Path(path).resolve()):
        repo = candidate.parent.parent
        if candidate.parent.name == "snapshots" and repo.name.startswith(("models--", "datasets--")):
            roots.append((repo / "blobs").resolve())
    return roots


def _inside(file: Path, roots: list[Path]) -> bool:
    target = Path(file).resolve()
    return any(target == root or target.is_relative_to(root) for root in roots)


def check_links(path: Path) -> None:
    """Refuse a checkpoint directory holding a symlink that points outside it."""
    roots = allowed_roots(path)
    seen = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            seen += 1
            if seen > _MAX_ENTRIES:
                raise JRTError(
                    f"{path} holds more than {_MAX_ENTRIES} files: point at a checkpoint directory"
                )
            entry = Path(dirpath) / name
            if entry.is_symlink() and not _inside(entry, roots):
                raise JRTError(
                    f"{entry} is a symlink to {entry.resolve()}, outside the checkpoint directory {path}: "
                    "copy the file into the directory instead"
                )
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]


def weight_files(path: Path) -> list[Path]:
    """The weight files a load of ``path`` reads, in transformers' order of preference."""
    path = Path(path)
    files = list_files(path)
    if "model.safetensors" in files:
        return [path / "model.safetensors"]
    if "model.safetensors.index.json" in files:
        return shard_files(path, "model.safetensors.index.json")
    if "pytorch_model.bin" in files:
        return [path / "pytorch_model.bin"]
    if "pytorch_model.bin.index.json" in files:
        return shard_files(path, "pytorch_model.bin.index.json")
    return []


def tensor_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a weight file, without reading tensor data."""
    file = Path(file)
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="pt") as f:
                return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        except Exception as exc:  # safetensors raises several types for corrupt files
            raise JRTError(
                f"{file} could not be read as safetensors ({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}); "
                "re-download it"
            ) from None
    try:
        obj = torch.load(str(file), map_location="meta", weights_only=True)
    except Exception as exc:
        raise JRTError(
            f"{file} could not be read with weights_only=True ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0][:200]}); convert it to safetensors or re-download it"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise JRTError(f"{file} does not hold a state dict (found {type(obj).__name__})")
    return {k: tuple(v.shape) for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _layers_found(shapes: dict[str, tuple[int, ...]]) -> tuple[int, str]:
    """How many layers the tensors hold (distinct layer indices in their names; else the tensors)."""
    layers = {int(m.group(1)) for key in shapes if (m := _LAYER_KEY.search("." + key))}
    return (len(layers), "layers") if layers else (len(shapes), "tensors")


def _largest_dim(shapes: dict[str, tuple[int, ...]]) -> int:
    return max((max(shape, default=1) for shape in shapes.values()), default=1)


def check_config_sizes(path: Path, config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse a config.json whose layer count the weight files cannot hold.

    Configs with a ``model_type`` are checked on transformers' parsed config (which knows which
    fields are real) by :func:`from_pretrained_checked`; the original formats here.
    """
    if not shapes:
        raise JRTError(f"the weight files of {path} hold no tensors: re-download the checkpoint")
    found, what = _layers_found(shapes)
    # transformers' configs name the layer count num_hidden_layers (checked again once parsed:
    # parsing a config of 10^7 layers already takes seconds).
    names = ("num_hidden_layers",) if "model_type" in config else _LAYER_FIELDS
    for name in names:
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > found:
            raise JRTError(
                f"{path}/config.json says {name}={value}, but the weights hold {found} {what}: "
                "config.json and the weights do not belong together"
            )
    mixers = config.get("layer_mixers")
    if isinstance(mixers, list) and len(mixers) > found:
        raise JRTError(
            f"{path}/config.json lists {len(mixers)} layer_mixers, but the weights hold {found} {what}"
        )


def _check_parsed_config(path: Path, config: Any, shapes: dict[str, tuple[int, ...]]) -> None:
    """transformers' parsed config against the tensors: layers found, vocabulary and width."""
    found, what = _layers_found(shapes)
    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(layers, int) and layers > found:
        raise JRTError(
            f"{path}/config.json says num_hidden_layers={layers}, but the weights hold {found} {what}: "
            "config.json and the weights do not belong together"
        )
    if isinstance(layers, int) and layers < 1:
        raise JRTError(
            f"{path}/config.json says num_hidden_layers={layers}: a model needs at least one layer"
        )
    largest = _largest_dim(shapes)
    for name in ("vocab_size", "hidden_size", "intermediate_size"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise JRTError(f"{path}/config.json says {name}={value}: sizes must be positive")
        if isinstance(value, int) and not isinstance(value, bool) and value > largest:
            raise JRTError(
                f"{path}/config.json says {name}={value}, larger than any tensor dimension of the weights "
                f"({largest}): config.json and the weights do not belong together"
            )


def check_checkpoint(path: Path, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every check of the module docstring; returns the tensors' shapes (by name)."""
    path = Path(path)
    check_links(path)
    shapes: dict[str, tuple[int, ...]] = {}
    for file in weight_files(path):
        shapes.update(tensor_shapes(file))
    check_config_sizes(path, config, shapes)
    return shapes


def from_pretrained_checked(
    model_cls, path: Path, shapes: dict[str, tuple[int, ...]] | None = None, **kwargs
):
    """``model_cls.from_pretrained(path, **kwargs)`` after the model was built on the meta device
    and its parameter count compared with the weight files'; every failure is one JRTError line."""
    from transformers import AutoConfig, PreTrainedModel

    path = Path(path)
    if shapes is None:
        shapes = check_checkpoint(path, read_config(path))
    in_files = sum(math.prod(shape) for shape in shapes.values())
    try:
        if isinstance(model_cls, type) and issubclass(model_cls, PreTrainedModel):
            config = model_cls.config_class.from_pretrained(path)
            build = lambda: model_cls(config)
        else:
            config = AutoConfig.from_pretrained(path, trust_remote_code=False)
            build = lambda: model_cls.from_config(config, trust_remote_code=False)
    except ValueError as exc:
        raise UnsupportedModelError(
            f"{path}: transformers cannot build a causal LM from it ({_first_line(exc)})"
        ) from None
    except Exception as exc:
        raise JRTError(
            f"{path}/config.json cannot configure {getattr(model_cls, '__name__', model_cls)} ({_first_line(exc)})"
        ) from None
    _check_parsed_config(path, config, shapes)
    try:
        with torch.device("meta"):
            meta = build()
    except ValueError as exc:  # e.g. a config that is no causal LM
        raise UnsupportedModelError(
            f"{path}: transformers cannot build a causal LM from it ({_first_line(exc)})"
        ) from None
    except Exception:  # a class that cannot be built on the meta device: the checks above remain
        meta = None
    if meta is not None:
        in_model = sum(p.numel() for p in meta.parameters())
        del meta
        if in_model > 1.25 * in_files + (1 << 20):
            raise JRTError(
                f"{path}/config.json describes a model of {in_model:,} parameters but the weight files hold "
                f"{in_files:,}: config.json and the weights do not belong together"
            )
    try:
        return model_cls.from_pretrained(path, **kwargs)
    except JRTError:
        raise
    except Exception as exc:
        raise JRTError(
            f"{path}: the checkpoint could not be loaded ({_first_line(exc)}); re-download it or convert it "
            "to safetensors"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def check_shape(key: str, tensor: torch.Tensor, expected: tuple[int, ...]) -> None:
    """Raise a one-line error naming ``key`` when a tensor's shape differs from the config's."""
    if tuple(tensor.shape) != tuple(expected):
        raise JRTError(
            f"checkpoint tensor {key} has shape {tuple(tensor.shape)} but config.json implies {tuple(expected)}: "
            "config.json and the weights do not belong together"
        )


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Parse a dtype option: None/'auto' (keep the default), 'float32', 'bfloat16', 'float16'."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "auto": None,
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in names:
        raise JRTArgumentError(f"dtype {dtype!r} is unknown: use one of auto, float32, bfloat16, float16")
    return names[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Parse a device option: None/'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1'."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise JRTArgumentError(f"device {device!r} is unknown: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise JRTArgumentError(f"device {device!r} was asked for but no CUDA GPU is available: use device cpu or auto")
    return dev
