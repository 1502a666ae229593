"""Reading checkpoint directories safely: config.json and weights (safetensors or pickle-free .bin)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import JRTArgumentError, JRTError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def read_config(path: Path) -> dict[str, Any]:
    """Parse ``config.json`` of a checkpoint directory (data only; nothing in it is executed)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise JRTError(f"{path} has no config.json: point at a checkpoint directory that contains one")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise JRTError(f"{file} is not valid JSON ({exc}); re-download or fix the file") from None
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
    index_file = path / index_name
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
        shards = sorted(set(index["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise JRTError(f"{index_file} is not a valid shard index ({exc})") from None
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        if "/" in shard or "\\" in shard or shard.startswith("."):
            raise JRTError(f"{index_file} names a shard outside the directory: {shard!r}")
        state.update(reader(path / shard))
    return state


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
