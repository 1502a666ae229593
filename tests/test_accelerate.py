"""``accelerate(model)``: transformers' Mamba-family models with this project's kernels.

Forced with ``JRT_KERNELS=triton`` on CPU (Triton's interpreter), the accelerated model must give
the unaccelerated model's logits and greedy tokens, and a prefill followed by one-token steps must
give what one parallel forward gives.
"""

import inspect

import pytest
import torch
from tiny_models import tiny_mamba_model

from jrt_prompt.models.accelerate import accelerate, is_accelerated, patched_modules, restore


def _tiny_falcon_mamba():
    from transformers import FalconMambaConfig, FalconMambaForCausalLM

    torch.manual_seed(1)
    config = FalconMambaConfig(vocab_size=258, hidden_size=32, num_hidden_layers=2, state_size=8, expand=2,
                               conv_kernel=4, pad_token_id=257, eos_token_id=256, bos_token_id=256)
    return FalconMambaForCausalLM(config).eval()


FAMILIES = {"mamba": lambda: tiny_mamba_model(0), "falcon_mamba": _tiny_falcon_mamba}


@pytest.fixture(autouse=True)
def _restore():
    yield
    restore()


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 250, (2, 19), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    return ids, mask


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_accelerated_logits_and_tokens_equal_transformers(family, request):
    model = FAMILIES[family]()
    ids, mask = _batch()
    with torch.no_grad():
        ref_logits = model(input_ids=ids, attention_mask=mask).logits
        ref_tokens = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
        assert accelerate(model) is model and is_accelerated(model)
        assert accelerate(model) is model  # idempotent
        request.getfixturevalue("force_triton")
        logits = model(input_ids=ids, attention_mask=mask).logits
        tokens = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert _rel(logits, ref_logits) < 1e-4
    assert torch.equal(tokens, ref_tokens)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prefill_then_steps_equal_one_forward(family, force_triton):
    model = accelerate(FAMILIES[family]())
    ids, _ = _batch()
    with torch.no_grad():
        full = model(input_ids=ids).logits
        out = model(input_ids=ids[:, :15], use_cache=True)
        # transformers 5.17 names the cache `cache_params`, later releases `cache`
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "cache_params"
        cache = getattr(out, name)
        steps = [out.logits[:, -1]]
        for t in range(15, 19):
            out = model(input_ids=ids[:, t : t + 1], use_cache=True, **{name: cache})
            steps.append(out.logits[:, -1])
    assert _rel(torch.stack(steps, 1), full[:, 14:]) < 1e-4


def test_restore_puts_transformers_functions_back():
    import transformers.models.mamba.modeling_mamba as mm

    original = mm.mamba_selective_scan
    accelerate(tiny_mamba_model(0))
    assert "transformers.models.mamba.modeling_mamba" in patched_modules()
    assert mm.mamba_selective_scan is not original and mm.mamba_selective_scan.__wrapped__ is original
    restore()
    assert mm.mamba_selective_scan is original and not patched_modules()


def test_other_models_are_left_alone():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    assert accelerate(model) is model and not is_accelerated(model) and not patched_modules()


def test_cpu_without_forcing_keeps_transformers_path(monkeypatch):
    """On CPU, unforced, the dispatcher calls transformers' own function (same numbers, no interpreter)."""
    monkeypatch.delenv("JRT_KERNELS", raising=False)
    model = tiny_mamba_model(0)
    ids, mask = _batch()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        accelerate(model)
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_accelerated_equals_transformers_torch_path(family, dtype, monkeypatch):
    monkeypatch.delenv("JRT_KERNELS", raising=False)
    model = FAMILIES[family]().cuda().to(dtype)
    ids, mask = (t.cuda() for t in _batch())
    with torch.no_grad():
        ref_logits = model(input_ids=ids, attention_mask=mask).logits
        ref_tokens = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
        accelerate(model)
        logits = model(input_ids=ids, attention_mask=mask).logits
        tokens = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert _rel(logits, ref_logits) < (1e-4 if dtype == torch.float32 else 2e-2)
    if dtype == torch.float32:
        assert torch.equal(tokens, ref_tokens)


def test_load_model_accelerates_when_kernels_are_forced(tmp_path, force_triton):
    from tiny_models import write_tiny_mamba

    from jrt_prompt import load_model

    loaded = load_model(write_tiny_mamba(tmp_path / "mamba"), device="cpu")
    assert is_accelerated(loaded.model)
