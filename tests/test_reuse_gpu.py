"""Document states on a CUDA GPU: reused answers against the whole prompt (fp32 tiny models, the
decode engine's CUDA graphs), agreement in bf16, and a state moved between devices.

Run on the device: ``HF_HUB_OFFLINE=1 python -m pytest -q -m gpu -rA -s tests/test_reuse_gpu.py``.
"""

import pytest
import torch
from test_engine_gpu import FAMILIES, _model

from jrt_prompt import JRTPrompt, generate
from jrt_prompt.generation import DocumentState, read_document

pytestmark = pytest.mark.gpu

DOC = "Alice signed the lease in Lyon on 3 May. The key is 42; Bob keeps the garden, Eve the car. " * 3
QUESTIONS = ["Who signed the lease?", "What is the key?", "Where?", "Who keeps the garden?", "Car?"] * 4


def _rows(gens):
    return [(g.text, g.answer_tokens, g.finish_reason, g.prompt_tokens) for g in gens]


@pytest.mark.parametrize("name", FAMILIES)
def test_reuse_equals_the_whole_prompt_on_cuda(name, tmp_path):
    model, tokenizer = _model(name, tmp_path)
    prompt = JRTPrompt.context_first(2)
    kwargs = dict(max_new_tokens=16, stop=())
    reference = generate(
        model,
        tokenizer,
        [prompt.render(DOC, q) for q in QUESTIONS],
        supports_left_padding=name != "rwkv",
        **kwargs,
    )
    state = read_document((model, tokenizer), DOC)
    got = state.ask(QUESTIONS, batch_size=32, **kwargs)
    same = sum(a == b for a, b in zip(_rows(got), _rows(reference), strict=True))
    print(f"{name}: {same}/{len(QUESTIONS)} reused answers equal the whole prompt's (fp32, CUDA)")
    assert same == len(QUESTIONS)
    loaded = DocumentState.load(state.save(tmp_path / "s.safetensors"), (model, tokenizer), prompt=prompt)
    assert _rows(loaded.ask(QUESTIONS, batch_size=32, **kwargs)) == _rows(got)


@pytest.mark.parametrize("name", ["mamba2", "jrt-rnn", "demo"])
def test_reuse_agrees_in_bf16(name, tmp_path):
    model, tokenizer = _model(name, tmp_path, dtype=torch.bfloat16)
    prompt = JRTPrompt.context_first(2)
    kwargs = dict(max_new_tokens=16, stop=())
    reference = generate(model, tokenizer, [prompt.render(DOC, q) for q in QUESTIONS], **kwargs)
    got = read_document((model, tokenizer), DOC).ask(QUESTIONS, batch_size=32, **kwargs)
    tokens = sum(len(g.text) for g in reference)
    agree = sum(
        next(
            (i for i, (x, y) in enumerate(zip(a.text, b.text, strict=False)) if x != y),
            min(len(a.text), len(b.text)),
        )
        for a, b in zip(got, reference, strict=True)
    )
    print(f"{name} bf16: reused answers agree with the whole prompt's on {agree}/{tokens} leading characters")
    assert agree >= 0.5 * tokens
