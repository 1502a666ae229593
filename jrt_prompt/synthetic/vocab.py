"""Tokenizers that go with the saved synthetic models, so ``load_model(path)`` finds one.

MQAR and set disjointness are token-level tasks; their ids get readable names (``k3`` a key,
``v7`` a value, ``e12`` a set element, ``|`` the separator, ``YES`` / ``NO`` the marks), one
whitespace-separated word per token: ``"k3 v7 k5 v1 | k3"`` is an MQAR prompt. kv-docs models use
the project's byte-level tokenizer.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ..tokenization import build_byte_tokenizer
from .kv_docs import KVDocsTask
from .mqar import FIRST_KEY, MQARTask
from .set_disjointness import FIRST_ELEMENT, SetDisjointnessTask


def token_names(task) -> list[str]:
    """The name of every id of a token-level task, in id order."""
    if isinstance(task, MQARTask):
        names = ["<pad>", "|"]
        names += [f"k{i}" for i in range(task.num_keys)]
        names += [f"v{i}" for i in range(task.num_values)]
        assert len(names) == FIRST_KEY + task.num_keys + task.num_values
        return names
    if isinstance(task, SetDisjointnessTask):
        names = ["<pad>", "|", "YES", "NO"] + [f"e{i}" for i in range(task.num_elements)]
        assert len(names) == FIRST_ELEMENT + task.num_elements
        return names
    raise TypeError(f"{type(task).__name__} has no word vocabulary")


def task_tokenizer(task) -> PreTrainedTokenizerFast:
    if isinstance(task, KVDocsTask):
        return build_byte_tokenizer()
    vocab = {name: i for i, name in enumerate(token_names(task))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<pad>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
