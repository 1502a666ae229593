"""The written-out Mamba / Mamba-2 decode step against the model's own one-token forward."""

import copy
import os

import pytest
import torch
from tiny_models import full_width_mamba_on_cuda, tiny_mamba2_model, tiny_mamba_model

from jrt_prompt import accelerate, generate
from jrt_prompt.generation import DecodeEngine, family_of
from jrt_prompt.generation.families import HF_SSM, HF_SSM_FUSED, _hf_ssm_tree, flatten
from jrt_prompt.generation.ssm_step import fused_ssm_step, supports_fused_step
from jrt_prompt.models.accelerate import restore
from jrt_prompt.tokenization import build_byte_tokenizer

MODELS = {
    "mamba": tiny_mamba_model,
    "mamba2": tiny_mamba2_model,
    "mamba2-groups": lambda: tiny_mamba2_model(groups=2),
}


def _compare_steps(model, steps=5, batch=3):
    """Max relative logit difference and max state difference over ``steps`` greedy steps."""
    ids = torch.randint(3, 200, (batch, 11), generator=torch.Generator().manual_seed(0))
    worst_logits = worst_state = 0.0
    with torch.inference_mode():
        logits, cache = HF_SSM.prefill(model, ids, None)
        mine = copy.deepcopy(cache)
        tokens = logits.argmax(-1)[:, None]
        for _ in range(steps):
            theirs = HF_SSM.step(model, cache, tokens)
            ours = fused_ssm_step(model, _hf_ssm_tree(mine), tokens)
            assert ours.dtype == torch.float32 and ours.shape == theirs.shape
            worst_logits = max(worst_logits, ((ours - theirs).abs().max() / theirs.abs().max()).item())
            for a, b in zip(flatten(_hf_ssm_tree(cache)), flatten(_hf_ssm_tree(mine)), strict=True):
                worst_state = max(worst_state, (a.float() - b.float()).abs().max().item())
            tokens = theirs.argmax(-1)[:, None]
    return worst_logits, worst_state


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_is_the_model_step_bit_for_bit_with_the_same_ops(name, dtype, accelerated, monkeypatch):
    """With the references on both sides every cast and rounding of transformers' block is kept:
    the logits and states are identical, in fp32 and in bf16."""
    monkeypatch.setenv("JRT_KERNELS", "reference")
    model = accelerated(MODELS[name]().to(dtype))
    assert _compare_steps(model) == (0.0, 0.0)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("batch", [1, 3])  # batch 1: the projections through the one-row linear
def test_step_with_triton_kernels_matches_the_model_step(name, batch, accelerated, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("interpreter test (the gpu tests run the compiled kernels)")
    assert os.environ.get("TRITON_INTERPRET") == "1"
    monkeypatch.setenv("JRT_KERNELS", "triton")
    model = accelerated(MODELS[name]())
    logits, state = _compare_steps(model, steps=3, batch=batch)
    assert logits < 1e-5 and state < 1e-5


@pytest.mark.parametrize("name", list(MODELS))
def test_step_matches_transformers_own_fallback_functions(name):
    """Not accelerated: transformers' own PyTorch functions on one side (fp32)."""
    logits, state = _compare_steps(MODELS[name]())
    assert logits < 1e-5 and state < 1e-5


def test_family_choice(monkeypatch):
    from test_engine import tiny_falcon_mamba

    assert family_of(tiny_mamba_model()) is HF_SSM_FUSED
    assert family_of(tiny_mamba2_model()) is HF_SSM_FUSED
    assert family_of(tiny_falcon_mamba()) is HF_SSM  # extra RMSNorms on B, C, dt: the model's step
    monkeypatch.setenv("JRT_DECODE_STEP", "model")
    assert not supports_fused_step(tiny_mamba_model())
    assert family_of(tiny_mamba2_model()) is HF_SSM


def test_constants_follow_the_weights():
    """-exp(A_log) is computed once per model, and again when the weights change."""
    model = tiny_mamba_model()
    ids = torch.tensor([[5, 6, 7]])
    with torch.inference_mode():
        _, cache = HF_SSM.prefill(model, ids, None)
        before = fused_ssm_step(model, _hf_ssm_tree(copy.deepcopy(cache)), ids[:, -1:])
    with torch.no_grad():
        for block in model.backbone.layers:
            block.mixer.A_log.mul_(0.5)
    with torch.inference_mode():
        after = fused_ssm_step(model, _hf_ssm_tree(copy.deepcopy(cache)), ids[:, -1:])
        theirs = HF_SSM.step(model, copy.deepcopy(cache), ids[:, -1:])
    assert not torch.allclose(before, after)
    assert torch.allclose(after, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_engine_answers_equal_with_either_step(name, monkeypatch):
    tokenizer = build_byte_tokenizer()
    model = MODELS[name]()
    prompts = ["The key is 42. What is the key?", "abc", "x", "Alice signed the lease in Lyon; who?"]
    kwargs = dict(max_new_tokens=12, stop=("\n",), batch_size=4)
    fused = generate(model, tokenizer, prompts, path="engine", **kwargs)
    monkeypatch.setenv("JRT_DECODE_STEP", "model")
    own = generate(model, tokenizer, prompts, path="engine", **kwargs)
    reference = generate(model, tokenizer, prompts, path="transformers", **kwargs)
    rows = lambda gens: [(g.text, g.answer_tokens, g.finish_reason) for g in gens]  # noqa: E731
    assert rows(fused) == rows(own) == rows(reference)
    ids = torch.tensor([tokenizer(p)["input_ids"][:3] for p in (prompts[0], prompts[1], prompts[3], "xyz")])
    ours = DecodeEngine(model, tokenizer, HF_SSM_FUSED).greedy_ids(ids, 9)[0]
    theirs = DecodeEngine(model, tokenizer, HF_SSM).greedy_ids(ids, 9)[0]
    assert ours.shape == (4, 9) and torch.equal(ours, theirs)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mamba-1.4b", "mamba2-1.3b"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 64])
def test_gpu_step_at_full_width_matches_the_accelerated_model_step(name, dtype, batch):
    """Real widths (4 layers of Mamba-1.4B / Mamba-2-1.3B, random weights) on the GPU: the written-out
    step against the accelerated model's own step, both through the Triton kernels."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    model = accelerate(full_width_mamba_on_cuda(name).to(dtype))
    try:
        ids = torch.randint(0, 50000, (batch, 64), device="cuda")
        with torch.inference_mode():
            logits, cache = HF_SSM.prefill(model, ids, None)
            mine = copy.deepcopy(cache)
            tokens = logits.argmax(-1)[:, None]
            for _ in range(4):
                theirs = HF_SSM.step(model, cache, tokens)
                ours = fused_ssm_step(model, _hf_ssm_tree(mine), tokens)
                rel = ((ours - theirs).norm() / theirs.norm()).item()
                assert rel < (1e-4 if dtype == torch.float32 else 2e-2), rel
                tokens = theirs.argmax(-1)[:, None]
    finally:
        restore()
