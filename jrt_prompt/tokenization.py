"""A byte-level tokenizer built with `tokenizers`, for the demo model, synthetic tasks and tests.

Every byte is one token (ids 0..255 follow the byte values), so any UTF-8 text round-trips and a
context cut at a token boundary is cut at a byte boundary. Two special tokens follow the bytes:
``<|endoftext|>`` (id 256, end of text) and ``<|pad|>`` (id 257).
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
BYTE_VOCAB_SIZE = 258


def build_byte_tokenizer(model_max_length: int = 4096) -> PreTrainedTokenizerFast:
    """Return a fast byte-level tokenizer: 256 byte tokens, then EOS (256) and PAD (257)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # ByteLevel maps each byte to a printable unicode character; order the vocabulary by byte
    # value so that token id == byte value.
    byte_to_char = _byte_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([EOS_TOKEN, PAD_TOKEN])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )
    return tokenizer


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the one ByteLevel uses)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table
