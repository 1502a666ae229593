"""Document states: read once, ask many questions; answers equal the whole prompt's (CPU, fp32)."""

import pytest
import torch
from test_engine import models, tiny_jrt  # noqa: F401  (the models fixture)
from tiny_models import tiny_mamba_model, write_tiny_llama

from jrt_prompt import JRTPrompt, generate, load_model
from jrt_prompt.errors import JRTArgumentError, JRTError
from jrt_prompt.generation import DocumentState, StateMismatchError, ask_many, read_document
from jrt_prompt.tokenization import build_byte_tokenizer

DOC = "Alice signed the lease in Lyon on 3 May. The key is 42; Bob keeps the garden, Eve the car."
OTHER = "Short doc: the code is 7."
QUESTIONS = ["Who signed the lease?", "What is the key?", "Where?", "Who keeps the garden?", "Car?"]
FAMILIES = ["mamba", "falcon-mamba", "mamba2", "rwkv", "jrt-rnn", "based", "demo", "llama"]


@pytest.fixture(scope="module")
def model_of(models, tmp_path_factory):  # noqa: F811
    def get(name):
        if name == "llama":
            loaded = load_model(write_tiny_llama(tmp_path_factory.mktemp("llama")), device="cpu")
            return loaded.model, loaded.tokenizer, True
        return models(name)

    return get


def _rows(gens):
    return [(g.text, g.answer_tokens, g.finish_reason, g.prompt_tokens) for g in gens]


def _full(model, tokenizer, padding, prompt, doc, questions, **kwargs):
    prompts = [prompt.render(doc, q) for q in questions]
    return generate(model, tokenizer, prompts, supports_left_padding=padding, **kwargs)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("repeat", [1, 2])
def test_reused_state_answers_as_the_whole_prompt(model_of, name, repeat, tmp_path):
    model, tokenizer, padding = model_of(name)
    prompt = JRTPrompt.context_first(repeat)
    kwargs = dict(max_new_tokens=10, stop=())
    reference = _full(model, tokenizer, padding, prompt, DOC, QUESTIONS, **kwargs)
    state = read_document((model, tokenizer), DOC, repeat=repeat)
    assert state.layout == "context-first" and state.tokens == len(tokenizer(prompt.prefix(DOC))["input_ids"])
    assert _rows(state.ask(QUESTIONS, **kwargs)) == _rows(reference)
    # Asking does not change the state: the same questions again give the same answers.
    assert _rows(state.ask(QUESTIONS[::-1], **kwargs)) == _rows(reference[::-1])
    loaded = DocumentState.load(
        state.save(tmp_path / "doc.safetensors"), (model, tokenizer), prompt=prompt, document=DOC
    )
    assert all(torch.equal(a, b) for a, b in zip(loaded.leaves, state.leaves, strict=True))
    assert _rows(loaded.ask(QUESTIONS, **kwargs)) == _rows(reference)


@pytest.mark.parametrize("name", ["mamba", "rwkv", "jrt-rnn", "demo"])
def test_stop_strings_and_batches_equal_one_by_one(model_of, name):
    model, tokenizer, padding = model_of(name)
    kwargs = dict(max_new_tokens=12, stop=("\n", "e"))
    state = read_document((model, tokenizer), DOC)
    batched = state.ask(QUESTIONS, batch_size=8, **kwargs)
    single = [state.ask(q, batch_size=1, **kwargs)[0] for q in QUESTIONS]
    assert _rows(batched) == _rows(single)
    assert _rows(batched) == _rows(
        _full(model, tokenizer, padding, JRTPrompt.context_first(2), DOC, QUESTIONS, **kwargs)
    )


@pytest.mark.parametrize("name", ["mamba2", "based", "demo"])
def test_a_batch_of_documents(model_of, name):
    model, tokenizer, padding = model_of(name)
    docs = [DOC, OTHER, DOC[:40]]
    states = read_document((model, tokenizer), docs)
    assert [s.tokens for s in states] == [
        len(tokenizer(JRTPrompt.context_first(2).prefix(d))["input_ids"]) for d in docs
    ]
    pairs = [(states[i % 3], q) for i, q in enumerate(QUESTIONS * 2)]
    kwargs = dict(max_new_tokens=8, stop=())
    together = ask_many(pairs, batch_size=4, **kwargs)
    alone = [
        read_document((model, tokenizer), docs[i % 3]).ask(q, **kwargs)[0]
        for i, q in enumerate(QUESTIONS * 2)
    ]
    assert _rows(together) == _rows(alone)


def test_a_state_from_another_model_or_layout_is_refused(model_of, tmp_path):
    mamba, tokenizer, _ = model_of("mamba")
    path = read_document((mamba, tokenizer), DOC).save(tmp_path / "s.safetensors")
    mamba2, tokenizer2, _ = model_of("mamba2")
    cases = [
        (dict(loaded_or_model=(mamba2, tokenizer2)), "another"),
        (
            dict(loaded_or_model=(tiny_mamba_model(seed=5), tokenizer)),
            "weights",
        ),  # same config, other weights
        (dict(loaded_or_model=(mamba, tokenizer), prompt=JRTPrompt.context_first(1)), "layout"),
        (
            dict(loaded_or_model=(mamba, tokenizer), prompt=JRTPrompt.context_first(2, separator=" ")),
            "layout",
        ),
        (dict(loaded_or_model=(mamba, tokenizer), document=OTHER), "another document"),
    ]
    for kwargs, word in cases:
        with pytest.raises(StateMismatchError) as err:
            DocumentState.load(path, **kwargs)
        message = str(err.value)
        assert "\n" not in message and word in message and "again" in message
    assert isinstance(StateMismatchError("x"), JRTError)
    torn = tmp_path / "torn.safetensors"
    torn.write_bytes(path.read_bytes()[:100])
    with pytest.raises(JRTArgumentError, match="not a readable safetensors"):
        DocumentState.load(torn, (mamba, tokenizer))
    with pytest.raises(JRTArgumentError, match="does not exist"):
        DocumentState.load(tmp_path / "missing.safetensors", (mamba, tokenizer))


def test_a_state_of_an_earlier_version_is_refused(model_of, tmp_path):
    """Version 1 kept JRT-RNN's sliding windows in window slots (now window + 1): such a file is
    refused with one line, not put into a ring of another size."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    model, tokenizer, _ = model_of("jrt-rnn")
    path = read_document((model, tokenizer), DOC).save(tmp_path / "s.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["format"] = "jrt-document-state/1"
    old = tmp_path / "v1.safetensors"
    save_file(tensors, str(old), metadata=meta)
    with pytest.raises(StateMismatchError, match="not a document state of this version") as err:
        DocumentState.load(old, (model, tokenizer))
    assert "\n" not in str(err.value)
    DocumentState.load(path, (model, tokenizer))  # the current version loads


def test_question_first_cannot_be_reused():
    model, tokenizer = tiny_jrt("based"), build_byte_tokenizer()
    with pytest.raises(JRTArgumentError, match="context_first"):
        read_document((model, tokenizer), DOC, prompt=JRTPrompt(repeat=2))
    with pytest.raises(JRTArgumentError, match="context_first"):
        JRTPrompt(repeat=2).prefix(DOC)
    with pytest.raises(JRTArgumentError, match="empty"):
        read_document((model, tokenizer), "", prompt=JRTPrompt.context_first(1, separator=""))


def test_layouts():
    from jrt_prompt.generation.reuse import ContextFirst, as_layout

    prompt = JRTPrompt.context_first(2)
    assert prompt.prefix("doc") + prompt.suffix("q?") == prompt.render("doc", "q?") == "doc\ndoc\nq?"
    for repeat, sep, prefix in [(1, "\n", ""), (2, " | ", " A:"), (3, "\n\n", "")]:
        jrt = JRTPrompt.context_first(repeat, sep, prefix)
        layout = as_layout(jrt)
        assert layout == ContextFirst(repeat, sep, prefix)
        assert layout.prefix("a doc") + layout.suffix("q?") == jrt.render("a doc", "q?")
    assert JRTPrompt.from_layout("question-first", 2) == JRTPrompt(repeat=2)
    assert JRTPrompt.from_layout("context-first", 1) == JRTPrompt.plain()
    assert JRTPrompt().layout == "question-first" and not JRTPrompt().reusable
    with pytest.raises(JRTArgumentError, match="layout 'sideways' is unknown"):
        JRTPrompt.from_layout("sideways")
