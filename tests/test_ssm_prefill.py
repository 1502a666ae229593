"""The written-out Mamba / Mamba-2 prefill against the model's own forward, and its continuation
of stored states against the model's step."""

import copy

import pytest
import torch
from tiny_models import full_width_mamba_on_cuda, tiny_mamba2_model, tiny_mamba_model

from jrt_prompt import accelerate
from jrt_prompt.generation import DecodeEngine, family_of
from jrt_prompt.generation.engine import EXTEND_PIECE, extend_pieces
from jrt_prompt.generation.families import HF_SSM, HF_SSM_FUSED, _hf_ssm_tree, flatten
from jrt_prompt.generation.ssm_prefill import fused_ssm_extend, fused_ssm_prefill
from jrt_prompt.models.accelerate import restore

MODELS = {
    "mamba": tiny_mamba_model,
    "mamba2": tiny_mamba2_model,
    "mamba2-groups": lambda: tiny_mamba2_model(groups=2),
}


def _ids(batch=3, length=37, seed=0):
    return torch.randint(3, 200, (batch, length), generator=torch.Generator().manual_seed(seed))


def _left_padding(ids, pads=(0, 5, 20)):
    mask = torch.ones_like(ids)
    for row, pad in enumerate(pads[: ids.shape[0]]):
        mask[row, :pad] = 0
    return mask


def _states(cache) -> list[torch.Tensor]:
    return flatten(_hf_ssm_tree(cache))


def _compare_prefill(model, ids, mask):
    """Max relative logit difference and max relative state difference, ours against the model's."""
    with torch.inference_mode():
        theirs, their_cache = HF_SSM.prefill(model, ids, mask)
        ours, our_cache = fused_ssm_prefill(model, ids, mask)
    assert ours.dtype == torch.float32 and ours.shape == theirs.shape
    logits = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    state = 0.0
    for a, b in zip(_states(their_cache), _states(our_cache), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        state = max(
            state, ((a.float() - b.float()).abs().max() / a.float().abs().max().clamp_min(1e-6)).item()
        )
    return logits, state


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("length", [1, 3, 37])
def test_prefill_matches_transformers_own_fallback(name, padded, length):
    """Not accelerated: transformers' own PyTorch functions on the model's side (fp32), odd
    lengths (shorter than the conv kernel too), batch > 1, left padding."""
    ids = _ids(length=length)
    mask = _left_padding(ids, pads=(0, min(5, length - 1), min(20, length - 1))) if padded else None
    logits, state = _compare_prefill(MODELS[name](), ids, mask)
    assert logits < 1e-4 and state < 1e-4, (logits, state)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_matches_the_accelerated_forward(name, dtype, accelerated, monkeypatch):
    """The project's kernels (PyTorch references) on both sides."""
    monkeypatch.setenv("JRT_KERNELS", "reference")
    model = accelerated(MODELS[name]().to(dtype))
    ids = _ids()
    logits, state = _compare_prefill(model, ids, _left_padding(ids))
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    assert logits < tolerance and state < tolerance, (logits, state)


@pytest.mark.parametrize("name", list(MODELS))
def test_prefill_with_triton_kernels(name, force_triton, accelerated):
    """The Triton kernels through the interpreter against the model's forward through them."""
    model = accelerated(MODELS[name]())
    ids = _ids(length=19)
    logits, state = _compare_prefill(model, ids, _left_padding(ids, pads=(0, 3, 11)))
    assert logits < 1e-4 and state < 1e-4, (logits, state)


@pytest.mark.parametrize("name", list(MODELS))
def test_extend_continues_stored_states_as_the_step_does(name):
    """Prefill 20 tokens, then 17 more in one forward: the same logits and states as 17 steps of
    the model's own decode step, and as one prefill over all 37."""
    model = MODELS[name]()
    ids = _ids()
    with torch.inference_mode():
        _, stepped = HF_SSM.prefill(model, ids[:, :20], None)
        extended = copy.deepcopy(stepped)
        for t in range(20, ids.shape[1]):
            by_steps = HF_SSM.step(model, stepped, ids[:, t : t + 1])
        by_extend = fused_ssm_extend(model, _hf_ssm_tree(extended), ids[:, 20:])
        whole, whole_cache = HF_SSM.prefill(model, ids, None)
    for other in (by_steps, whole):
        assert ((by_extend - other).abs().max() / other.abs().max()).item() < 1e-4
    for a, b, c in zip(_states(stepped), _states(extended), _states(whole_cache), strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5)
        assert torch.allclose(c.float(), b.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_prefilled_cache_decodes_with_either_step(name):
    """The cache the written-out prefill fills is a transformers cache: the model's own step and
    the engine continue from it exactly as from the model's prefill."""
    model = MODELS[name]()
    ids = _ids()
    mask = _left_padding(ids)
    ours = DecodeEngine(model, None, HF_SSM_FUSED).greedy_ids(ids, 8, attention_mask=mask)[0]
    theirs = DecodeEngine(model, None, HF_SSM).greedy_ids(ids, 8, attention_mask=mask)[0]
    assert torch.equal(ours, theirs)
    with torch.inference_mode():
        logits, cache = fused_ssm_prefill(model, ids, mask)
        step = HF_SSM.step(model, cache, logits.argmax(-1)[:, None])
    assert step.shape == logits.shape


def test_engine_extends_questions_of_different_lengths_in_groups():
    """continue_rows through ``extend``: rows with questions of different lengths give the states
    and first tokens that the token-at-a-time path gives."""
    model = tiny_mamba2_model()
    family = family_of(model)
    assert family is HF_SSM_FUSED and family.extend is not None
    doc = _ids(batch=1, length=23)
    questions = [[5, 6, 7], [8, 9], [10, 11, 12], [13]]
    with torch.inference_mode():
        _, cache = family.prefill(model, doc.expand(len(questions), -1).contiguous(), None)
    engine = DecodeEngine(model, None, family)
    first, state = engine.continue_rows(copy.deepcopy(cache), questions, slots_limit=4, pad_id=0)
    stepwise = DecodeEngine(model, None, HF_SSM)
    first_ref, state_ref = stepwise.continue_rows(copy.deepcopy(cache), questions, slots_limit=4, pad_id=0)
    assert torch.equal(first, first_ref)
    for a, b in zip(state, state_ref, strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5)


def test_extend_pieces_are_powers_of_two_that_sum_to_the_length():
    for length in range(1, 300):
        pieces = extend_pieces(length)
        assert sum(pieces) == length
        assert all(p & (p - 1) == 0 and p <= EXTEND_PIECE for p in pieces)
        assert pieces == sorted(pieces, reverse=True)
    assert extend_pieces(23) == [16, 4, 2, 1] and extend_pieces(130) == [64, 64, 2]


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_extend_in_slots_equals_one_forward_per_length(name):
    """The path a GPU takes (here without graphs): questions of mixed lengths, more rows than a
    slot batch holds and an odd number of rows a batch (idle slots), each question read piece by
    piece in the decoders' static buffers. Same first tokens and states as one forward per
    group of equal length."""
    model = MODELS[name]()
    family = family_of(model)
    doc = _ids(batch=1, length=23)
    questions = [[5, 6, 7, 8, 9, 10, 11], [8, 9], [10, 11, 12, 13, 14, 15, 16], [13], [3] * 23, [7, 7]]
    with torch.inference_mode():
        _, cache = family.prefill(model, doc.expand(len(questions), -1).contiguous(), None)
        engine = DecodeEngine(model, None, family)
        first_ref, state_ref = engine._extend_rows(copy.deepcopy(cache), questions)
        first, state = engine._extend_rows_in_slots(copy.deepcopy(cache), questions, slots_limit=4)
    assert torch.equal(first, first_ref)
    for a, b in zip(state, state_ref, strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5)


def test_model_prefill_on_request(monkeypatch):
    """JRT_PREFILL=model prefills through the model's own forward (its numbers to the bit)."""
    model = tiny_mamba_model()
    ids = _ids()
    monkeypatch.setenv("JRT_PREFILL", "model")
    with torch.inference_mode():
        ours, _ = HF_SSM_FUSED.prefill(model, ids, None)
        theirs, _ = HF_SSM.prefill(model, ids, None)
    assert torch.equal(ours, theirs)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mamba-1.4b", "mamba2-1.3b"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,length", [(1, 2053), (4, 300)])
def test_gpu_prefill_at_full_width_is_as_accurate_as_the_accelerated_forward(
    name, dtype, batch, length, monkeypatch
):
    """Real widths (4 layers of Mamba-1.4B / Mamba-2-1.3B, random weights) on the GPU, left padding
    at batch > 1. Over two thousand tokens and four random layers the two computations' roundings
    drift apart (about 1e-4 relative in fp32, 2e-2 in bf16), so both are measured against the
    same model in float64 through the PyTorch references: the written-out prefill (and its
    16-token ``extend``) must be within twice the accelerated model's own error (after 16 steps),
    or within the kernels' tolerance of the float64 result."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    model = full_width_mamba_on_cuda(name)
    exact = copy.deepcopy(model).double()
    model = accelerate(model.to(dtype))
    rel = lambda a, b: ((a.double() - b.double()).norm() / b.double().norm()).item()  # noqa: E731
    ids = torch.randint(0, 50000, (batch, length), device="cuda")
    more = torch.randint(0, 50000, (batch, 16), device="cuda")
    mask = _left_padding(ids, pads=(0, 7, 100, 251)) if batch > 1 else None
    try:
        with torch.inference_mode():
            theirs, their_cache = HF_SSM.prefill(model, ids, mask)
            ours, our_cache = fused_ssm_prefill(model, ids, mask)
            for t in range(16):
                stepped = HF_SSM.step(model, their_cache, more[:, t : t + 1])
            extended = fused_ssm_extend(model, _hf_ssm_tree(our_cache), more)
            monkeypatch.setenv("JRT_KERNELS", "reference")
            truth, truth_cache = HF_SSM.prefill(exact, ids, mask)
            their_states = _states(their_cache)  # after the 16 steps, as ours after extend
            truth_more = HF_SSM.step(exact, truth_cache, more[:, :1])
            for t in range(1, 16):
                truth_more = HF_SSM.step(exact, truth_cache, more[:, t : t + 1])
    finally:
        restore()
    # the chunked scan over the 16 tokens of ``extend`` rounds differently from 16 one-token
    # updates (about 5e-5 against 1e-5 in fp32, measured): either is accepted within the kernels'
    # tolerance, 1e-4 relative in fp32 and 2e-2 in bf16
    floor = 1e-4 if dtype == torch.float32 else 2e-2
    errors = {
        "logits": (rel(ours, truth), rel(theirs, truth)),
        "extended logits": (rel(extended, truth_more), rel(stepped, truth_more)),
    }
    # the caches were updated in place by the steps: every state is the one after the 16 tokens
    for i, (a, b, c) in enumerate(zip(_states(our_cache), their_states, _states(truth_cache), strict=True)):
        errors[f"state {i} after extend"] = (rel(a, c), rel(b, c))
    bad = {k: v for k, v in errors.items() if v[0] > max(2 * v[1], floor)}
    assert not bad, f"ours vs the model's own error against float64: {bad} (all: {errors})"
    assert rel(ours, theirs) < (1e-3 if dtype == torch.float32 else 5e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mamba-1.4b", "mamba2-1.3b"])
def test_gpu_questions_read_in_captured_pieces_equal_one_forward(name):
    """On the GPU the engine reads questions in CUDA-graph-captured extend pieces: every piece
    length is captured (no eager fallback), and the first tokens and states equal one eager
    forward per length (fp32, real widths, 4 layers)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import warnings

    from jrt_prompt.generation.engine import _EAGER, _Decoder

    model = accelerate(full_width_mamba_on_cuda(name))
    family = family_of(model)
    gen = torch.Generator().manual_seed(1)
    questions = [torch.randint(0, 50000, (n,), generator=gen).tolist() for n in (16, 16, 23, 5, 16, 1)]
    doc = torch.randint(0, 50000, (1, 300), device="cuda")
    with torch.inference_mode():
        _, cache = family.prefill(model, doc.expand(len(questions), -1).contiguous(), None)
    engine = DecodeEngine(model, None, family)
    first_ref, state_ref = engine._extend_rows(copy.deepcopy(cache), questions)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for _ in range(2):  # the second call replays the graphs the first captured
            first, state = engine.continue_rows(copy.deepcopy(cache), questions, slots_limit=4, pad_id=0)
    decoders = [v for v in engine._store().values() if isinstance(v, _Decoder)]
    extenders = [e for d in decoders for e in d.extenders.values()]
    assert {e.ids.shape[1] for e in extenders} == {16, 4, 2, 1} and all(
        e.graph is not _EAGER for e in extenders
    )
    assert torch.equal(first, first_ref)
    for a, b in zip(state, state_ref, strict=True):
        assert ((a.double() - b.double()).norm() / b.double().norm()).item() < 1e-4
