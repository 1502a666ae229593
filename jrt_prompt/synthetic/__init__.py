"""Synthetic recall tasks, and small models trained on them from scratch.

- :class:`MQARTask` (multi-query associative recall), :class:`SetDisjointnessTask` (both orders),
  :class:`KVDocsTask` / :func:`kv_docs_examples` (key-value documents, byte-level text);
- every example in three prompt forms (:class:`PromptForm`): default, question-first, JRT;
- :func:`train` / :func:`evaluate` / :func:`run_job` (multi-query loss, held-out accuracy per form),
  and ``scripts/train_synthetic.py`` for the sweep of docs/quality.md.
"""

from .forms import ALL_FORMS, PromptForm, parse_form
from .kv_docs import KVDocsTask, kv_docs_examples, read_jsonl, write_jsonl
from .models import ModelSpec, build_model, state_floats
from .mqar import MQARTask
from .set_disjointness import SetDisjointnessTask
from .training import TrainConfig, evaluate, evaluate_saved, load_trained, make_task, run_job, train

__all__ = [
    "ALL_FORMS",
    "KVDocsTask",
    "MQARTask",
    "ModelSpec",
    "PromptForm",
    "SetDisjointnessTask",
    "TrainConfig",
    "build_model",
    "evaluate",
    "evaluate_saved",
    "kv_docs_examples",
    "load_trained",
    "make_task",
    "parse_form",
    "read_jsonl",
    "run_job",
    "state_floats",
    "train",
    "write_jsonl",
]
