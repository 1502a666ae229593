import pytest
from tiny_models import tiny_mamba_model, write_tiny_llama, write_tiny_mamba2, write_tiny_rwkv

from jrt_prompt import JRTError, generate, load_model
from jrt_prompt.tokenization import build_byte_tokenizer

PROMPTS = [
    "The key is 42. What is the key?",
    "abc",
    "Alice signed the lease in Lyon; who signed it?",
    "x",
    "A much longer prompt, so that the batch needs a lot of left padding for the short ones.",
]


def _texts(gens):
    return [(g.text, g.answer_tokens, g.finish_reason) for g in gens]


@pytest.mark.parametrize("source", ["mamba", "mamba2", "llama", "rwkv"])
def test_batched_equals_one_by_one(tmp_path, source):
    tokenizer = build_byte_tokenizer()
    if source == "mamba":
        model = tiny_mamba_model()
    else:
        writer = {"mamba2": write_tiny_mamba2, "llama": write_tiny_llama, "rwkv": write_tiny_rwkv}[source]
        loaded = load_model(writer(tmp_path / source), device="cpu")
        model, tokenizer = loaded.model, loaded.tokenizer
    batched = generate(model, tokenizer, PROMPTS, max_new_tokens=10, stop=(), batch_size=4)
    single = [generate(model, tokenizer, [p], max_new_tokens=10, stop=())[0] for p in PROMPTS]
    assert _texts(batched) == _texts(single)
    assert [g.prompt_tokens for g in batched] == [len(p.encode()) for p in PROMPTS]


def test_stop_strings_cut_the_answer():
    tokenizer = build_byte_tokenizer()
    model = tiny_mamba_model()
    free = generate(model, tokenizer, PROMPTS, max_new_tokens=30, stop=())
    for prompt, g in zip(PROMPTS, free, strict=True):
        # Pick a stop string that the free-running answer contains, and check the cut.
        text = g.text
        if len(text) < 4:
            continue
        stop = text[2:4]
        cut = generate(model, tokenizer, [prompt], max_new_tokens=30, stop=(stop,))[0]
        assert cut.finish_reason == "stop"
        assert cut.text == text[: text.find(stop)]
        assert stop not in cut.text
        assert cut.answer_tokens <= g.answer_tokens


def test_bad_arguments():
    tokenizer = build_byte_tokenizer()
    model = tiny_mamba_model()
    with pytest.raises(JRTError, match="max_new_tokens"):
        generate(model, tokenizer, ["a"], max_new_tokens=0)
    with pytest.raises(JRTError, match="prompt 1 is empty"):
        generate(model, tokenizer, ["a", ""])
    with pytest.raises(JRTError, match="prompt 0 has 10 tokens, over the limit of 5"):
        generate(model, tokenizer, ["0123456789"], max_prompt_tokens=5)
