"""The generation layer: every way of generating answers.

- :func:`generate` (``api.py``): greedy answers for any transformers causal LM; constant-state
  models go through the decode engine (``engine.py``, CUDA graphs on a GPU, where each family
  keeps its state: ``families.py``), the rest through transformers' ``generate`` (``hf.py``);
- :func:`generate_loaded`: the same for a :class:`~jrt_prompt.models.loading.LoadedModel`;
- :func:`generate_like_harness` / :func:`harness_generate` (``harness.py``): the paper's
  evaluation harness, reproduced exactly (reference mode, docs/inference_modes.md);
- :func:`read_document` / :class:`DocumentState` (``reuse.py``): read a document once, answer
  many questions from copies of its state, save and load the state;
- :class:`Generation` (``result.py``): one answer; batching rules in ``batching.py``.
"""

from .api import generate, generate_loaded
from .batching import plan_batches
from .engine import DecodeEngine, release_graphs
from .families import family_of
from .harness import generate_like_harness, harness_generate
from .result import Generation
from .reuse import DocumentState, StateCache, StateMismatchError, ask_many, read_document

__all__ = [
    "DecodeEngine",
    "DocumentState",
    "StateCache",
    "StateMismatchError",
    "ask_many",
    "read_document",
    "Generation",
    "family_of",
    "generate",
    "generate_like_harness",
    "generate_loaded",
    "harness_generate",
    "plan_batches",
    "release_graphs",
]
