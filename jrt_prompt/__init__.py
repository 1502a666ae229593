"""jrt-prompt: make recurrent language models recall their prompt.

- :class:`JRTPrompt` lays a context and question out for JRT-Prompt (context read k times,
  question also up front);
- :func:`load_model` loads a roster model, hub id or local checkpoint with its tokenizer;
- :func:`generate` decodes greedy answers in batches for any transformers causal LM.
"""

from .errors import JRTError
from .generation import Generation, generate
from .models.loading import LoadedModel, load_model
from .prompts import FittedPrompt, JRTPrompt, fit_prompt

__all__ = [
    "FittedPrompt",
    "Generation",
    "JRTError",
    "JRTPrompt",
    "LoadedModel",
    "fit_prompt",
    "generate",
    "load_model",
]
__version__ = "0.1.0"
