"""jrt-prompt: make recurrent language models recall their prompt.

- :class:`JRTPrompt` lays a context and question out for JRT-Prompt (context read k times,
  question also up front);
- :func:`load_model` loads a roster model, hub id or local checkpoint with its tokenizer;
- :func:`generate` decodes greedy answers in batches for any transformers causal LM (recurrent
  models through the constant-state decode engine, :mod:`jrt_prompt.generation`);
- :func:`accelerate` puts this project's Triton kernels into a transformers Mamba / Mamba-2 /
  Falcon-Mamba model the caller loaded (``load_model`` does it on CUDA).

``import jrt_prompt`` is light: torch and transformers load on first use of a name that needs
them. It also registers the JRT-RNN model type (``jrt_rnn``) with transformers' Auto classes, so
``AutoModelForCausalLM.from_pretrained(<a JRT-RNN directory>)`` works after ``import jrt_prompt``
— at once when transformers' Auto classes are already loaded, else as soon as they are.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib.abc import Loader, MetaPathFinder
from typing import TYPE_CHECKING, Any

from .errors import JRTArgumentError, JRTError, ModelNotFoundError, UnsupportedModelError

if TYPE_CHECKING:  # pragma: no cover
    from .generation import Generation, generate
    from .models.accelerate import accelerate
    from .models.loading import LoadedModel, load_model
    from .prompts import FittedPrompt, JRTPrompt, fit_prompt

__version__ = "0.1.0"

# Public name -> the module that defines it (imported on first access).
_LAZY = {
    "FittedPrompt": ".prompts",
    "JRTPrompt": ".prompts",
    "fit_prompt": ".prompts",
    "Generation": ".generation",
    "generate": ".generation",
    "DocumentState": ".generation",
    "read_document": ".generation",
    "LoadedModel": ".models.loading",
    "load_model": ".models.loading",
    "accelerate": ".models.accelerate",
}

__all__ = [
    "DocumentState",
    "read_document",
    "FittedPrompt",
    "Generation",
    "JRTArgumentError",
    "JRTError",
    "JRTPrompt",
    "LoadedModel",
    "ModelNotFoundError",
    "UnsupportedModelError",
    "accelerate",
    "fit_prompt",
    "generate",
    "load_model",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# --- registering the JRT-RNN model type with transformers' Auto classes ------------------------

# The Auto classes live here; AutoModelForCausalLM.from_pretrained cannot run before it is imported.
_AUTO_MODULE = "transformers.models.auto.modeling_auto"


def register_model_types() -> None:
    """Register ``jrt_rnn`` with AutoConfig / AutoModelForCausalLM (imports torch and transformers)."""
    importlib.import_module(".models.modeling_jrt", __name__)


class _RegisterAfterImport(MetaPathFinder):
    """Runs :func:`register_model_types` right after transformers' Auto classes module is executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _AUTO_MODULE:
            return None
        sys.meta_path.remove(self)  # one shot; find the real spec without this finder
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRegister(spec.loader)
        return spec


class _ThenRegister(Loader):
    def __init__(self, inner: Loader):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.inner  # tracebacks and source lookups
        self.inner.exec_module(module)
        register_model_types()


def _register_lazily() -> None:
    if _AUTO_MODULE in sys.modules:
        register_model_types()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


_register_lazily()
