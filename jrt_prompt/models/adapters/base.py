"""What an adapter is: how to recognise, load and size one model family.

An adapter module defines one ``ADAPTER = Adapter(...)`` object. ``load_model`` finds the
checkpoint directory, reads its ``config.json``, asks the adapter named by the roster (or the
first adapter whose ``detect`` accepts the directory) to build the model, then loads the
tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Adapter:
    """One model family.

    name: the adapter's name in the roster (``adapter:`` field of configs/models.yaml).
    family: the architecture family reported to users (mamba, mamba2, gla, rwkv, jrt-rnn, ...).
    detect: ``detect(config, files) -> bool``, whether a checkpoint directory belongs to this
        family (``config`` is the parsed config.json, ``files`` the file names in the directory).
    load: ``load(path, config, device, dtype) -> PreTrainedModel`` in eval mode.
    state_bytes: ``state_bytes(config, prompt_tokens, dtype_bytes) -> int``, the bytes of
        recurrent state (or KV cache) one sequence holds after reading ``prompt_tokens`` tokens.
    supports_left_padding: a left-padded batch gives the same output as each row alone.
    reads_prompt_twice: the architecture already reads its prompt non-causally (JRT-RNN), so the
        prompt is not repeated by default.
    default_tokenizer: hub id of the tokenizer when the checkpoint directory has none.
    needs_gpu: the model's forward only runs on a CUDA device (fla's Triton kernels).
    """

    name: str
    family: str
    detect: Callable[[dict[str, Any], set[str]], bool]
    load: Callable[[Path, dict[str, Any], torch.device, torch.dtype | None], Any]
    state_bytes: Callable[[dict[str, Any], int, int], int]
    supports_left_padding: bool = True
    reads_prompt_twice: bool = False
    default_tokenizer: str | None = None
    needs_gpu: bool = False
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
