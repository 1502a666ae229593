"""Triton kernels == PyTorch references, through the Triton CPU interpreter on small shapes.

The full-size runs of the same checks are in test_kernels_gpu.py (marker `gpu`).
"""

import dataclasses
import importlib
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the kernels' decoration (GPU machines compile)

from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from jrt_prompt.kernels.based import triton_normaliser  # noqa: E402
from jrt_prompt.kernels.based import triton_prefill as based_triton  # noqa: E402
from jrt_prompt.kernels.based.reference import based_quadratic  # noqa: E402
from jrt_prompt.kernels.pla import triton_prefill as pla_triton  # noqa: E402
from jrt_prompt.kernels.pla.reference import pla_quadratic  # noqa: E402
from jrt_prompt.kernels.taylor import triton_common  # noqa: E402
from jrt_prompt.kernels.taylor import triton_step as step_triton  # noqa: E402
from jrt_prompt.kernels.taylor.config import DEFAULT_CONFIG, ChunkConfig, StepConfig  # noqa: E402
from jrt_prompt.kernels.taylor.reference import state_from_tokens, step_reference  # noqa: E402
from jrt_prompt.kernels.taylor.state import LinearAttentionState  # noqa: E402

if not torch.cuda.is_available() and not isinstance(based_triton._chunked_kernel, InterpretedFunction):
    # imported earlier in compiled mode: decorate again, each module after the helpers it imports
    triton_common = importlib.reload(triton_common)
    triton_normaliser = importlib.reload(triton_normaliser)
    based_triton = importlib.reload(based_triton)
    pla_triton = importlib.reload(pla_triton)
    step_triton = importlib.reload(step_triton)

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter tests run on CPU only")

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}
# several chunks and value blocks on tiny inputs; pair features by one-hot selection products;
# the normaliser in its own pass over blocks of two chunks (several blocks per row)
SMALL = ChunkConfig(chunk=32, block_dv=16, pairs="onehot", normaliser_block=64)
SMALL_CYCLIC = dataclasses.replace(SMALL, pairs="cyclic")  # pair groups by cyclic distance
# the normaliser carried inside the prefill kernels' walk (normaliser_block=0)
SMALL_INLINE = dataclasses.replace(SMALL, normaliser_block=0)
SMALL_CYCLIC_INLINE = dataclasses.replace(SMALL_CYCLIC, normaliser_block=0)
# every layout of the pair features, and the cyclic layout with the inline normaliser: each
# prefill / PLA / encoder check runs under all of them
PAIRS = ["onehot", "cyclic", "cyclic-inline"]


def _with_pairs(config, pairs):
    layout, _, inline = pairs.partition("-")
    config = dataclasses.replace(config or DEFAULT_CONFIG, pairs=layout)
    return dataclasses.replace(config, normaliser_block=0) if inline else config


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _rand(*shape, gen, dtype):
    return torch.randn(*shape, generator=gen).to(dtype)


def _inputs(b, n, h, dv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [_rand(b, n, h, d, gen=g, dtype=dtype) for d in (16, 16, dv, 16, dv)]


def _f64(*ts):
    return [t.double() for t in ts]


@pytest.mark.parametrize(
    "dtype,n,config",
    [
        (torch.float32, 1, SMALL),
        (torch.float32, 77, SMALL),
        (torch.bfloat16, 77, SMALL),
        (torch.float16, 77, SMALL),
        (torch.float32, 1, SMALL_CYCLIC),
        (torch.float32, 77, SMALL_CYCLIC),
        (torch.bfloat16, 77, SMALL_CYCLIC),
        (torch.float16, 77, SMALL_CYCLIC),
        (torch.float32, 77, SMALL_INLINE),
        (torch.float32, 77, SMALL_CYCLIC_INLINE),
        (torch.bfloat16, 77, SMALL_CYCLIC_INLINE),
        (torch.float16, 77, SMALL_CYCLIC_INLINE),
    ],
    ids=lambda x: (
        (x.pairs + ("-inline" if x.normaliser_block <= 0 else "")) if isinstance(x, ChunkConfig) else None
    ),
)
def test_based_prefill_matches_reference(dtype, n, config):
    q, k, v, _, _ = _inputs(2, n, 2, 24, dtype)  # dv=24: partial value block
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(2, n, generator=g) > 0.25
    init = state_from_tokens(*_inputs(2, 9, 2, 24, torch.float32, seed=7)[1:3], torch.ones(2, 9))
    o, st = based_triton.based_prefill(
        q, k, v, mask=mask, initial_state=init, output_final_state=True, config=config
    )
    init64 = LinearAttentionState(init.kv.double(), init.ksum.double())
    o_ref, st_ref = based_quadratic(*_f64(q, k, v), mask=mask, initial_state=init64, output_final_state=True)
    assert o.dtype == dtype and not torch.isnan(o).any()
    assert _rel(o, o_ref) < TOL[dtype]
    assert _rel(st.kv, st_ref.kv) < TOL[dtype] and _rel(st.ksum, st_ref.ksum) < 1e-6
    assert torch.all(o[~mask] == 0)


@pytest.mark.parametrize("pairs", PAIRS)
def test_based_prefill_default_chunk_no_mask(pairs):
    q, k, v, _, _ = _inputs(1, 150, 1, 64, torch.float32, seed=2)  # 150 = 2 chunks of 64 + 22
    o, st = based_triton.based_prefill(q, k, v, output_final_state=True, config=_with_pairs(None, pairs))
    o_ref, st_ref = based_quadratic(*_f64(q, k, v), output_final_state=True)
    assert _rel(o, o_ref) < 1e-4 and _rel(st.kv, st_ref.kv) < 1e-4


@pytest.mark.parametrize(
    "dtype,lengths",
    [
        (torch.float32, [0, 0]),
        (torch.float32, [1, 1]),
        (torch.float32, [70, 70]),
        (torch.float32, [0, 45]),
        (torch.bfloat16, [70, 3]),
    ],
)
@pytest.mark.parametrize("pairs", PAIRS)
def test_pla_prefill_matches_reference(dtype, lengths, pairs):
    n = 70
    q, k, v, ke, ve = _inputs(2, n, 2, 16, dtype, seed=3)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, :6] = False  # left padding of the second row
    enc = torch.tensor(lengths)
    o, st = pla_triton.pla_prefill(
        q, k, v, ke, ve, enc_lengths=enc, mask=mask, output_final_state=True, config=_with_pairs(SMALL, pairs)
    )
    o_ref, st_ref = pla_quadratic(*_f64(q, k, v, ke, ve), enc_lengths=enc, mask=mask, output_final_state=True)
    assert _rel(o, o_ref) < TOL[dtype]
    assert _rel(st.kv, st_ref.kv) < TOL[dtype] and _rel(st.ksum, st_ref.ksum) < 1e-6


@pytest.mark.parametrize("pairs", PAIRS)
def test_encoder_reduction_over_several_splits(pairs):
    n = 2500  # > 1024 tokens: the reduction splits the encoder over several programs
    _, _, _, ke, ve = _inputs(1, n, 1, 16, torch.float32, seed=4)
    enc = torch.tensor([2100])
    st = pla_triton.encoder_state(
        ke, ve, enc_lengths=enc, config=_with_pairs(ChunkConfig(chunk=64, block_dv=16), pairs)
    )
    w = (torch.arange(n) < 2100).double()[None]
    st_ref = state_from_tokens(ke.double(), ve.double(), w)
    assert _rel(st.kv, st_ref.kv) < 1e-5 and _rel(st.ksum, st_ref.ksum) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dv_blocks", [0, 3])  # 3: the value dim in blocks, the k sums launched after
def test_decode_step_matches_reference_and_updates_in_place(dtype, dv_blocks):
    g = torch.Generator().manual_seed(6)
    b, h, dv = 3, 2, 40
    state = state_from_tokens(
        _rand(b, 20, h, 16, gen=g, dtype=torch.float32),
        _rand(b, 20, h, dv, gen=g, dtype=torch.float32),
        torch.ones(b, 20),
    )
    state64 = LinearAttentionState(state.kv.double(), state.ksum.double())
    kv_ptr = state.kv.data_ptr()
    for _ in range(3):
        q, k = _rand(b, h, 16, gen=g, dtype=dtype), _rand(b, h, 16, gen=g, dtype=dtype)
        v = _rand(b, h, dv, gen=g, dtype=dtype)
        o = step_triton.decode_step(q, k, v, state, config=StepConfig(block_r=16, dv_blocks=dv_blocks))
        o_ref = step_reference(*_f64(q, k, v), state64)
        assert o.dtype == dtype and _rel(o, o_ref) < TOL[dtype]
    assert state.kv.data_ptr() == kv_ptr
    assert _rel(state.kv, state64.kv) < 1e-6 and _rel(state.ksum, state64.ksum) < 1e-6


@pytest.mark.parametrize("dv_blocks", [0, 7])
def test_decode_step_in_value_blocks_at_batch_one(dv_blocks):
    """The 1.3B models' head size (112, not a power of two) at batch 1 × 2 heads: fewer programs
    than multiprocessors, so the step runs in value blocks (0: as picked from the shape) and the
    k sums in a second launch; equal to the reference, the state updated in place."""
    g = torch.Generator().manual_seed(7)
    b, h, dv = 1, 2, 112
    state = state_from_tokens(
        _rand(b, 30, h, 16, gen=g, dtype=torch.float32), _rand(b, 30, h, dv, gen=g, dtype=torch.float32), torch.ones(b, 30)
    )
    state64 = LinearAttentionState(state.kv.double(), state.ksum.double())
    assert dv_blocks or step_triton._dv_blocks(b * h, dv, torch.device("cpu")) > 1
    for _ in range(3):
        q, k = _rand(b, h, 16, gen=g, dtype=torch.bfloat16), _rand(b, h, 16, gen=g, dtype=torch.bfloat16)
        v = _rand(b, h, dv, gen=g, dtype=torch.bfloat16)
        o = step_triton.decode_step(q, k, v, state, config=StepConfig(dv_blocks=dv_blocks))
        assert _rel(o, step_reference(*_f64(q, k, v), state64)) < TOL[torch.bfloat16]
    assert _rel(state.kv, state64.kv) < 1e-6 and _rel(state.ksum, state64.ksum) < 1e-6


def test_dispatch_prefill_then_decode_through_public_ops(monkeypatch):
    """JRT_KERNELS=triton routes the public ops to the kernels; PLA prefill + steps == one long prefill."""
    from jrt_prompt.kernels import linear_attention_step, prefix_linear_attention

    monkeypatch.setenv("JRT_KERNELS", "triton")
    n = 40
    q, k, v, ke, ve = _inputs(2, n + 2, 2, 16, torch.float32, seed=8)
    enc = torch.tensor([n, 11])
    o_pre, st = prefix_linear_attention(
        q[:, :n], k[:, :n], v[:, :n], ke[:, :n], ve[:, :n], enc_lengths=enc, output_final_state=True
    )
    outs = [linear_attention_step(q[:, t], k[:, t], v[:, t], st) for t in (n, n + 1)]
    o_ref, _ = pla_quadratic(*_f64(q, k, v, ke, ve), enc_lengths=enc)
    assert _rel(o_pre, o_ref[:, :n]) < 1e-4
    for t, o_t in zip((n, n + 1), outs, strict=True):
        assert _rel(o_t, o_ref[:, t]) < 1e-4


@pytest.mark.parametrize("pairs", PAIRS)
def test_segmented_prefill_equals_single_pass(pairs):
    """Segments run in parallel from prefix-summed starting states; same output and final state."""
    q, k, v, _, _ = _inputs(2, 90, 1, 16, torch.float32, seed=9)
    mask = torch.ones(2, 90, dtype=torch.bool)
    mask[0, :13] = False
    init = state_from_tokens(*_inputs(2, 5, 1, 16, torch.float32, seed=10)[1:3], torch.ones(2, 5))
    seg = _with_pairs(ChunkConfig(chunk=32, block_dv=16, segments=3, normaliser_block=32), pairs)
    o, st = based_triton.based_prefill(
        q, k, v, mask=mask, initial_state=init, output_final_state=True, config=seg
    )
    init64 = LinearAttentionState(init.kv.double(), init.ksum.double())
    o_ref, st_ref = based_quadratic(*_f64(q, k, v), mask=mask, initial_state=init64, output_final_state=True)
    assert _rel(o, o_ref) < 1e-4
    assert _rel(st.kv, st_ref.kv) < 1e-5 and _rel(st.ksum, st_ref.ksum) < 1e-6


@pytest.mark.parametrize("pairs", PAIRS)
def test_symmetric_prefill_reads_any_initial_state_exactly(pairs):
    """An initial state whose quadratic block is not symmetric still gives the exact output."""
    q, k, v, _, _ = _inputs(1, 40, 1, 16, torch.float32, seed=11)
    g = torch.Generator().manual_seed(12)
    init = LinearAttentionState(
        torch.randn(1, 1, 273, 16, generator=g), torch.rand(1, 1, 273, generator=g) + 1
    )
    o, st = based_triton.based_prefill(
        q, k, v, initial_state=init, output_final_state=True, config=_with_pairs(SMALL, pairs)
    )
    init64 = LinearAttentionState(init.kv.double(), init.ksum.double())
    o_ref, st_ref = based_quadratic(*_f64(q, k, v), initial_state=init64, output_final_state=True)
    assert _rel(o, o_ref) < 1e-4

    def sym(kv):  # the quadratic block, symmetrised: what any read-out sees
        quad = kv[..., 17:, :].reshape(*kv.shape[:2], 16, 16, -1)
        return (quad + quad.transpose(2, 3)) / 2

    assert _rel(sym(st.kv), sym(st_ref.kv)) < 1e-5
    assert _rel(st.kv[..., :17, :], st_ref.kv[..., :17, :]) < 1e-5


@pytest.mark.parametrize("pairs", PAIRS)
def test_states_of_the_ops_are_symmetric(pairs):
    q, k, v, ke, ve = _inputs(2, 50, 2, 16, torch.float32, seed=13)
    _, st = pla_triton.pla_prefill(
        q,
        k,
        v,
        ke,
        ve,
        enc_lengths=torch.tensor([20, 50]),
        output_final_state=True,
        config=_with_pairs(None, pairs),
    )
    quad = st.kv[..., 17:, :].reshape(2, 2, 16, 16, 16)
    assert torch.equal(quad, quad.transpose(2, 3))


def test_cyclic_layout_reads_and_writes_each_pair_row():
    """A state with one nonzero pair row (i, j) is read through exactly that pair, and the final
    state of an empty run puts it back in rows (i, j) and (j, i): the cyclic groups cover the 120
    pairs once each, the half group (distance 8) included."""
    q, k, v, _, _ = _inputs(1, 1, 1, 16, torch.float32, seed=14)
    mask = torch.zeros(1, 1, dtype=torch.bool)  # no token enters the state
    cfg = SMALL_CYCLIC
    for i, j in [(0, 1), (3, 11), (15, 0), (2, 10), (10, 2), (7, 15), (9, 14)]:
        kv = torch.zeros(1, 1, 273, 16)
        kv[0, 0, 17 + i * 16 + j] = torch.arange(1.0, 17.0)
        init = LinearAttentionState(kv, torch.ones(1, 1, 273))
        _, st = based_triton.based_prefill(
            q, k, v, mask=mask, initial_state=init, output_final_state=True, config=cfg
        )
        expect = torch.zeros_like(kv)
        expect[0, 0, 17 + i * 16 + j] = expect[0, 0, 17 + j * 16 + i] = torch.arange(1.0, 17.0) / 2
        assert torch.allclose(st.kv, expect, rtol=1e-6, atol=0), (i, j)


def test_cyclic_and_onehot_layouts_agree_on_states():
    q, k, v, _, _ = _inputs(2, 70, 2, 24, torch.float32, seed=15)
    outs = [
        based_triton.based_prefill(q, k, v, output_final_state=True, config=_with_pairs(SMALL, p))
        for p in PAIRS
    ]
    for p, (o, st) in zip(PAIRS[1:], outs[1:], strict=True):
        assert _rel(o, outs[0][0]) < 1e-6 and _rel(st.kv, outs[0][1].kv) < 1e-6
        if p.endswith("-inline"):  # the normaliser summed in another order
            assert _rel(st.ksum, outs[0][1].ksum) < 1e-6
        else:  # the normaliser pass is shared by both layouts
            assert torch.equal(st.ksum, outs[0][1].ksum)


def test_pair_layout_is_validated():
    q, k, v, _, _ = _inputs(1, 8, 1, 16, torch.float32)
    with pytest.raises(ValueError, match="pairs"):
        based_triton.based_prefill(q, k, v, config=_with_pairs(SMALL, "diagonal"))


def test_ablation_variants_run_as_modules_of_their_own(tmp_path):
    """scripts/ablate_prefill.py times each variant as a copy of based/triton_prefill.py loaded
    outside the package (its relative imports made absolute): the uncut copy computes what the
    shipped kernel does, a copy with a part cut out does not."""
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "ablate_prefill.py"
    spec = importlib.util.spec_from_file_location("ablate_prefill", script)
    ablate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablate)
    q, k, v, _, _ = _inputs(1, 40, 1, 16, torch.float32, seed=16)
    shipped, _ = based_triton.based_prefill(q, k, v, config=SMALL_CYCLIC)
    for name in ("full", "no_den_read"):
        path = tmp_path / f"ablate_{name}.py"
        path.write_text(ablate.variant_source(name))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module  # dataclasses look their module up by name
        try:
            spec.loader.exec_module(module)
            o, _ = module.based_prefill(q, k, v, config=SMALL_CYCLIC)
        finally:
            del sys.modules[path.stem]
        assert (_rel(o, shipped) == 0) == (name == "full"), name
