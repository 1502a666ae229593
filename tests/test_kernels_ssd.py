"""Mamba-2 SSD: reference == transformers' own PyTorch functions; Triton (CPU interpreter, small
shapes) == reference; the public ops' checks and dispatch. Full-size GPU runs: marker `gpu` at the end.
"""

import dataclasses
import importlib
import math
import os

import pytest
import torch
from transformers.models.mamba2 import modeling_mamba2 as hf

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the kernels' decoration (GPU machines compile)

from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

import jrt_prompt.kernels.ssd.triton as tssd  # noqa: E402
from jrt_prompt.errors import JRTError  # noqa: E402
from jrt_prompt.kernels.ssd import reference as ref  # noqa: E402
from jrt_prompt.kernels.ssd import ssd_chunk_scan, ssd_implementation, ssd_state_update  # noqa: E402

if not torch.cuda.is_available() and not isinstance(tssd._chunk_out_kernel, InterpretedFunction):
    tssd = importlib.reload(tssd)  # imported earlier in compiled mode

interpreter = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter tests run on CPU only")
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}
INF = float("inf")


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _scan_inputs(b, l, h, p, g, n, dtype=torch.float32, seed=0, device="cpu"):
    """x, dt, A, B, C, D, dt_bias, initial state, z; dt is raw (before bias and softplus)."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    x = r(b, l, h, p)
    dt = r(b, l, h) - 1.0
    A = -torch.exp(r(h) * 0.5)
    B, C = r(b, l, g, n) / math.sqrt(n) * 2, r(b, l, g, n) / math.sqrt(n) * 2
    D, dt_bias = r(h), r(h) * 0.5
    s0 = r(b, h, p, n)
    z = r(b, l, h, p)
    out = [x.to(dtype), dt.to(dtype), A, B.to(dtype), C.to(dtype), D, dt_bias, s0, z.to(dtype)]
    return [t.to(device) for t in out]


def _projection_views(b, l, h, p, g, n, dtype=torch.float32, seed=0):
    """x, B, C, dt as views of one [b, l, width] projection, split as transformers' mixer splits it."""
    gen = torch.Generator().manual_seed(seed)
    width = h * p + 2 * g * n + h + 3  # 3 spare columns: no view is contiguous
    proj = (torch.randn(b, l, width, generator=gen) * 0.7).to(dtype)
    x, B, C, dt, _ = proj.split([h * p, g * n, g * n, h, 3], dim=-1)
    return x.view(b, l, h, p), B.view(b, l, g, n), C.view(b, l, g, n), dt


# --- reference == transformers' PyTorch functions (fp32) -------------------------------------


@pytest.mark.parametrize("l", [1, 17, 40, 64])
@pytest.mark.parametrize("g", [1, 2])
@pytest.mark.parametrize("with_state", [False, True])
def test_reference_matches_transformers_chunk_scan(l, g, with_state):
    x, dt, A, B, C, D, dt_bias, s0, _ = _scan_inputs(2, l, 4, 8, g, 16, seed=l + g)
    kw = dict(D=D, dt_bias=dt_bias, dt_softplus=True, return_final_states=True,
              initial_states=s0 if with_state else None)
    y, final = ref.ssd_chunk_scan(x, dt, A, B, C, 16, **kw)
    y_hf, final_hf = hf.mamba2_chunk_scan(x, dt, A, B, C, 16, **kw)
    assert _rel(y, y_hf) <= 1e-4
    assert _rel(final, final_hf) <= 1e-4
    assert final.dtype == torch.float32 and final.shape == (2, 4, 8, 16)


@pytest.mark.parametrize("dt_limit", [(0.0, INF), (0.05, 0.4)])
def test_reference_matches_transformers_without_softplus_bias_and_skip(dt_limit):
    x, dt, A, B, C, *_ = _scan_inputs(1, 23, 4, 8, 2, 16, seed=3)
    y = ref.ssd_chunk_scan(x, dt.abs(), A, B, C, 8, dt_limit=dt_limit)
    y_hf = hf.mamba2_chunk_scan(x, dt.abs(), A, B, C, 8, dt_limit=dt_limit)
    assert _rel(y, y_hf) <= 1e-4


def test_reference_chunk_size_does_not_change_the_result():
    x, dt, A, B, C, D, dt_bias, s0, z = _scan_inputs(2, 37, 4, 8, 2, 16, seed=5)
    kw = dict(D=D, z=z, dt_bias=dt_bias, initial_states=s0, dt_softplus=True, return_final_states=True)
    y8, f8 = ref.ssd_chunk_scan(x, dt, A, B, C, 8, **kw)
    y64, f64 = ref.ssd_chunk_scan(x, dt, A, B, C, 64, **kw)
    assert _rel(y8, y64) <= 1e-5 and _rel(f8, f64) <= 1e-5


def test_reference_step_matches_transformers_with_expanded_views():
    b, h, p, g, n = 3, 4, 8, 2, 16
    x, dt, A, B, C, D, dt_bias, s0, _ = _scan_inputs(b, 1, h, p, g, n, seed=7)
    # the views transformers' mixer passes (Mamba2Mixer.forward, recurrent form)
    args = (
        x[:, 0],
        dt.transpose(1, 2).expand(-1, -1, p),
        A[:, None, None].expand(-1, p, n),
        B[:, 0],
        C[:, 0],
        D[:, None].expand(-1, p),
    )
    kw = dict(z=None, dt_bias=dt_bias[:, None].expand(-1, p), dt_softplus=True)
    state, state_hf = s0.clone(), s0.clone()
    y = ref.ssd_state_update(state, *args, **kw)
    y_hf = hf.mamba2_selective_state_update(state_hf, *args, **kw)
    assert _rel(y, y_hf) <= 1e-4
    assert _rel(state, state_hf) <= 1e-4


def test_reference_steps_equal_the_chunk_scan():
    b, l, h, p, g, n = 2, 9, 4, 8, 2, 16
    x, dt, A, B, C, D, dt_bias, s0, z = _scan_inputs(b, l, h, p, g, n, seed=11)
    y, final = ref.ssd_chunk_scan(
        x, dt, A, B, C, 4, D=D, z=z, dt_bias=dt_bias, initial_states=s0, dt_softplus=True, return_final_states=True
    )
    state = s0.clone()
    for t in range(l):
        y_t = ref.ssd_state_update(
            state, x[:, t], dt[:, t, :, None].expand(-1, -1, p), A[:, None, None].expand(-1, p, n),
            B[:, t], C[:, t], D=D[:, None].expand(-1, p), z=z[:, t],
            dt_bias=dt_bias[:, None].expand(-1, p), dt_softplus=True,
        )
        assert _rel(y_t, y[:, t]) <= 1e-4
    assert _rel(state, final) <= 1e-4


# --- Triton (interpreter) == reference -------------------------------------------------------

# separate chunk-state and carry kernels (the default fuses them: SMALL_FUSED below)
SMALL = tssd.SSDConfig(block_m=16, block_k=16, block_p=16, block_n=16, block_h=4, block_pass=64, fused_states=False)
SMALL_INLINE_CB = dataclasses.replace(SMALL, precompute_cb=False)  # C B^T inside the output kernel
SMALL_FUSED = dataclasses.replace(SMALL, fused_states=True)  # chunk states and carry in one kernel
CONFIGS = {"pre": SMALL, "inline": SMALL_INLINE_CB, "fused": SMALL_FUSED}


@interpreter
@pytest.mark.parametrize(
    "dtype,l,cb",
    [
        (torch.float32, 1, "pre"),
        (torch.float32, 17, "pre"),
        (torch.float32, 40, "pre"),
        (torch.bfloat16, 17, "pre"),
        (torch.bfloat16, 40, "pre"),
        (torch.float32, 40, "inline"),
        (torch.bfloat16, 17, "inline"),
        (torch.float32, 40, "fused"),
        (torch.bfloat16, 40, "fused"),
    ],
)
def test_triton_chunk_scan_matches_reference(dtype, l, cb):
    # h=4, p=16, n=16, g=2, chunk 16; batch 2; initial state, D skip, z gate, final state; C B^T
    # in its own launch ("pre") or inside the output kernel ("inline"); chunk states and carry in
    # one kernel ("fused")
    x, dt, A, B, C, D, dt_bias, s0, z = _scan_inputs(2, l, 4, 16, 2, 16, dtype=dtype, seed=l)
    kw = dict(D=D, z=z, dt_bias=dt_bias, initial_states=s0, dt_softplus=True, return_final_states=True)
    config = CONFIGS[cb]
    y, final = tssd.ssd_chunk_scan(x, dt, A, B, C, 16, config=config, **kw)
    y_ref, final_ref = ref.ssd_chunk_scan(x, dt, A, B, C, 16, **kw)
    assert y.dtype == dtype and final.dtype == torch.float32
    assert _rel(y, y_ref) <= TOL[dtype]
    assert _rel(final, final_ref) <= TOL[dtype]


@interpreter
def test_triton_chunk_scan_without_state_skip_or_bias_and_with_dt_limit():
    # one query block of 32 over two key blocks of 16 (the causal mask inside a block), fp16
    x, dt, A, B, C, *_ = _scan_inputs(1, 45, 4, 16, 1, 16, dtype=torch.float16, seed=2)
    cfg = tssd.SSDConfig(block_m=32, block_k=16, block_p=16, block_n=16)
    cfg_inline = dataclasses.replace(cfg, precompute_cb=False)
    y_in = tssd.ssd_chunk_scan(x, dt.abs(), A, B, C, 32, dt_limit=(0.05, 0.5), config=cfg_inline)
    y, final = tssd.ssd_chunk_scan(x, dt.abs(), A, B, C, 32, dt_limit=(0.05, 0.5), return_final_states=True, config=cfg)
    y_ref, final_ref = ref.ssd_chunk_scan(x, dt.abs(), A, B, C, 32, dt_limit=(0.05, 0.5), return_final_states=True)
    assert _rel(y, y_ref) <= TOL[torch.float16] and _rel(y_in, y_ref) <= TOL[torch.float16]
    assert _rel(final, final_ref) <= TOL[torch.float16]
    assert tssd.ssd_chunk_scan(x, dt.abs(), A, B, C, 32, config=cfg).shape == x.shape


@interpreter
def test_triton_chunk_scan_odd_sizes_and_a_chunk_size_that_is_no_power_of_two():
    # head dim and state 24 (masked 32-wide blocks), 2 heads in 1 group; chunk_size 24 (the kernels
    # then take chunks of their own length: the result does not depend on it)
    x, dt, A, B, C, D, dt_bias, s0, z = _scan_inputs(2, 30, 2, 24, 1, 24, seed=8)
    kw = dict(D=D, z=z, dt_bias=dt_bias, initial_states=s0, dt_softplus=True, return_final_states=True)
    cfg = tssd.SSDConfig(block_m=16, block_k=16, block_p=16, block_n=16)
    y, final = tssd.ssd_chunk_scan(x, dt, A, B, C, 24, config=cfg, **kw)
    y_ref, final_ref = ref.ssd_chunk_scan(x, dt, A, B, C, 24, **kw)
    assert _rel(y, y_ref) <= 1e-4 and _rel(final, final_ref) <= 1e-4


@interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_chunk_scan_reads_views_of_one_projection(dtype):
    b, l, h, p, g, n = 2, 21, 4, 16, 2, 16
    x, B, C, dt = _projection_views(b, l, h, p, g, n, dtype=dtype, seed=4)
    assert not any(t.is_contiguous() for t in (x, B, C, dt))
    _, _, A, _, _, D, dt_bias, s0, _ = _scan_inputs(b, l, h, p, g, n, seed=4)
    s0 = s0.transpose(2, 3).contiguous().transpose(2, 3)  # a strided initial state too
    kw = dict(D=D, dt_bias=dt_bias, initial_states=s0, dt_softplus=True, return_final_states=True)
    y, final = tssd.ssd_chunk_scan(x, dt, A, B, C, 16, config=SMALL, **kw)
    y_ref, final_ref = ref.ssd_chunk_scan(x, dt, A, B, C, 16, **kw)
    assert _rel(y, y_ref) <= TOL[dtype] and _rel(final, final_ref) <= TOL[dtype]


@interpreter
@pytest.mark.parametrize("states", ["pre", "fused"])
def test_triton_chunked_prefill_continues_from_its_state(states):
    x, dt, A, B, C, D, dt_bias, s0, _ = _scan_inputs(2, 40, 4, 16, 2, 16, seed=9)
    kw = dict(D=D, dt_bias=dt_bias, dt_softplus=True, return_final_states=True, config=CONFIGS[states])
    y_all, f_all = tssd.ssd_chunk_scan(x, dt, A, B, C, 16, **kw)
    cut = 23  # not on a chunk boundary
    y1, f1 = tssd.ssd_chunk_scan(x[:, :cut], dt[:, :cut], A, B[:, :cut], C[:, :cut], 16, **kw)
    y2, f2 = tssd.ssd_chunk_scan(x[:, cut:], dt[:, cut:], A, B[:, cut:], C[:, cut:], 16, initial_states=f1, **kw)
    assert _rel(torch.cat([y1, y2], 1), y_all) <= 1e-4
    assert _rel(f2, f_all) <= 1e-4


@interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_step_matches_reference_in_place(dtype):
    b, h, p, g, n = 2, 4, 16, 2, 16
    x, dt, A, B, C, D, dt_bias, s0, z = _scan_inputs(b, 1, h, p, g, n, dtype=dtype, seed=13)
    args = (
        x[:, 0], dt.transpose(1, 2).expand(-1, -1, p), A[:, None, None].expand(-1, p, n), B[:, 0], C[:, 0],
    )
    kw = dict(D=D[:, None].expand(-1, p), z=z[:, 0], dt_bias=dt_bias[:, None].expand(-1, p), dt_softplus=True)
    state, state_ref = s0.clone(), s0.clone()
    y = tssd.ssd_state_update(state, *args, **kw)
    y_ref = ref.ssd_state_update(state_ref, *args, **kw)
    assert y.dtype == dtype
    assert _rel(y, y_ref) <= TOL[dtype]
    assert _rel(state, state_ref) <= 1e-5  # the state itself is fp32 math on the same inputs
    assert _rel(state, s0) > 1e-3  # it was updated


@interpreter
def test_triton_steps_after_a_triton_prefill_equal_one_pass():
    b, l, h, p, g, n = 1, 20, 4, 16, 2, 16
    x, dt, A, B, C, D, dt_bias, _, _ = _scan_inputs(b, l, h, p, g, n, seed=17)
    kw = dict(D=D, dt_bias=dt_bias, dt_softplus=True)
    y_all = tssd.ssd_chunk_scan(x, dt, A, B, C, 16, config=SMALL, **kw)
    cut = 17
    _, state = tssd.ssd_chunk_scan(
        x[:, :cut], dt[:, :cut], A, B[:, :cut], C[:, :cut], 16, return_final_states=True, config=SMALL, **kw
    )
    for t in range(cut, l):
        y_t = tssd.ssd_state_update(
            state, x[:, t], dt[:, t, :, None].expand(-1, -1, p), A[:, None, None].expand(-1, p, n),
            B[:, t], C[:, t], D=D[:, None].expand(-1, p), dt_bias=dt_bias[:, None].expand(-1, p), dt_softplus=True,
        )
        assert _rel(y_t, y_all[:, t]) <= 1e-4


# --- the public ops: dispatch and input checks -----------------------------------------------


def test_public_ops_run_the_reference_on_cpu(monkeypatch):
    monkeypatch.delenv("JRT_KERNELS", raising=False)
    x, dt, A, B, C, D, dt_bias, s0, _ = _scan_inputs(1, 10, 4, 8, 2, 16, seed=1)
    y, final = ssd_chunk_scan(x, dt, A, B, C, 8, D=D, dt_bias=dt_bias, dt_softplus=True,
                              initial_states=s0, return_final_states=True, z=None, some_mixer_kwarg=1)
    y_ref, final_ref = ref.ssd_chunk_scan(x, dt, A, B, C, 8, D=D, dt_bias=dt_bias, dt_softplus=True,
                                          initial_states=s0, return_final_states=True)
    assert torch.equal(y, y_ref) and torch.equal(final, final_ref)
    # D and dt_bias as [heads] are taken by the step too
    state = s0.clone()
    out = ssd_state_update(state, x[:, 0], dt[:, 0, :, None].expand(-1, -1, 8), A, B[:, 0], C[:, 0], D=D,
                           dt_bias=dt_bias, dt_softplus=True)
    assert out.shape == (1, 4, 8) and not torch.equal(state, s0)


@interpreter
def test_public_ops_run_triton_when_forced(monkeypatch):
    monkeypatch.setenv("JRT_KERNELS", "triton")
    monkeypatch.setattr("jrt_prompt.kernels.ssd.triton.DEFAULT_CONFIG", SMALL)
    x, dt, A, B, C, D, dt_bias, s0, _ = _scan_inputs(1, 18, 4, 16, 2, 16, seed=6)
    calls = []
    real = tssd.ssd_chunk_scan
    monkeypatch.setattr(tssd, "ssd_chunk_scan", lambda *a, **k: calls.append(1) or real(*a, **k))
    y = ssd_chunk_scan(x, dt, A, B, C, 16, D=D, dt_bias=dt_bias, dt_softplus=True)
    assert calls and _rel(y, ref.ssd_chunk_scan(x, dt, A, B, C, 16, D=D, dt_bias=dt_bias, dt_softplus=True)) <= 1e-4


def test_implementation_choice(monkeypatch):
    monkeypatch.delenv("JRT_SSD", raising=False)
    assert ssd_implementation() == "triton"
    monkeypatch.setenv("JRT_SSD", "FLA")
    assert ssd_implementation() == "fla"
    assert ssd_implementation("triton") == "triton"  # the argument wins
    monkeypatch.setenv("JRT_SSD", "cuda")
    with pytest.raises(JRTError, match="JRT_SSD='cuda'"):
        ssd_implementation()
    with pytest.raises(JRTError, match="implementation='tilelang'"):
        ssd_implementation("tilelang")


def test_fla_missing_is_a_one_line_error(monkeypatch):
    import sys

    from jrt_prompt.kernels.ssd import fla as fla_ssd

    monkeypatch.setitem(sys.modules, "fla", None)  # an import of fla fails
    monkeypatch.setitem(sys.modules, "fla.ops.simple_gla", None)
    x, dt, A, B, C, *_ = _scan_inputs(1, 4, 4, 8, 2, 16)
    with pytest.raises(JRTError, match="flash-linear-attention") as err:
        fla_ssd.ssd_chunk_scan(x, dt, A, B, C, 16)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: a.update(B=a["B"][:, :, :1].expand(-1, -1, 3, -1)), "3 groups, which must divide the 4 heads"),
        (lambda a: a.update(C=a["C"][:, :-1]), "C must be"),
        (lambda a: a.update(dt=a["dt"][..., None]), "dt must be"),
        (lambda a: a.update(A=a["A"][:2]), "A must be"),
        (lambda a: a.update(chunk_size=0), "chunk_size must be a positive int"),
        (lambda a: a.update(D=torch.ones(5)), "D must be"),
        (lambda a: a.update(initial_states=torch.zeros(1, 4, 8, 8)), "initial_states must be"),
        (lambda a: a.update(dt_limit=(1.0, 0.5)), "dt_limit must have min <= max"),
        (lambda a: a.update(seq_idx=torch.zeros(1, 6, dtype=torch.long)), "seq_idx"),
        (lambda a: a.update(B=a["B"].double()), "must share one dtype"),
        (lambda a: a.update(hidden_states=a["hidden_states"][:, :0], dt=a["dt"][:, :0],
                            B=a["B"][:, :0], C=a["C"][:, :0]), "no tokens"),
    ],
)
def test_chunk_scan_rejects_bad_input(change, match):
    x, dt, A, B, C, *_ = _scan_inputs(1, 6, 4, 8, 2, 16)
    args = dict(hidden_states=x, dt=dt, A=A, B=B, C=C, chunk_size=4)
    change(args)
    with pytest.raises(JRTError, match=match) as err:
        ssd_chunk_scan(**args)
    assert "\n" not in str(err.value)


def test_state_update_rejects_bad_input():
    x, dt, A, B, C, D, _, s0, _ = _scan_inputs(2, 1, 4, 8, 2, 16)
    good = dict(state=s0.clone(), hidden_states=x[:, 0], dt=dt.transpose(1, 2).expand(-1, -1, 8), A=A,
                B=B[:, 0], C=C[:, 0])
    with pytest.raises(JRTError, match=r"state must be \[batch, heads, head_dim, state\]"):
        ssd_state_update(**{**good, "state": s0[:, :, :, :8]})
    with pytest.raises(JRTError, match="hidden_states must be 3-D"):
        ssd_state_update(**{**good, "hidden_states": x})
    with pytest.raises(JRTError, match="D must be"):
        ssd_state_update(**good, D=torch.ones(3))
    with pytest.raises(JRTError, match="state_batch_indices"):
        ssd_state_update(**good, state_batch_indices=torch.arange(2))


# --- a whole tiny Mamba2ForCausalLM with its two functions replaced ----------------------------


def _tiny_mamba2():
    from tiny_models import _tiny
    from transformers import Mamba2Config, Mamba2ForCausalLM

    return _tiny(
        Mamba2Config, Mamba2ForCausalLM, seed=0, hidden_size=32, num_hidden_layers=2, state_size=16,
        num_heads=4, head_dim=16, n_groups=2, expand=2, chunk_size=16,
    )


def _forward_with_cache(model, ids, cache=None):
    """logits and cache of one forward; the cache keyword is `cache` (older transformers: `cache_params`)."""
    import inspect

    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "cache_params"
    out = model(ids, use_cache=True, **({key: cache} if cache is not None else {}))
    return out.logits, getattr(out, key)


@pytest.mark.parametrize(
    "kernels,device",
    [
        ("reference", "cpu"),
        pytest.param("triton", "cpu", marks=interpreter),
        pytest.param("auto", "cuda", marks=pytest.mark.gpu),  # the Triton kernels, compiled
        pytest.param("auto-fla", "cuda", marks=pytest.mark.gpu),  # fla's chunk_simple_gla for the scan
    ],
)
def test_tiny_mamba2_with_the_ops_patched_in_matches_transformers(monkeypatch, kernels, device):
    kernels, _, implementation = kernels.partition("-")
    if implementation == "fla" and not _fla_available():
        pytest.skip("fla is not installed")
    monkeypatch.setenv("JRT_SSD", implementation or "triton")
    tol = 2e-3 if implementation == "fla" else 1e-4  # fla's fp32 products may run as TF32
    model = _tiny_mamba2().to(device)
    ids = torch.randint(0, 200, (2, 21), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        expected = model(ids).logits
        _, cache = _forward_with_cache(model, ids[:, :19])
        expected_next = [_forward_with_cache(model, ids[:, t : t + 1], cache)[0] for t in (19, 20)]
    monkeypatch.setenv("JRT_KERNELS", kernels)
    if device == "cpu":
        monkeypatch.setattr("jrt_prompt.kernels.ssd.triton.DEFAULT_CONFIG", SMALL)
    monkeypatch.setattr(hf, "mamba2_chunk_scan", ssd_chunk_scan)
    monkeypatch.setattr(hf, "mamba2_selective_state_update", ssd_state_update)
    with torch.no_grad():
        logits = model(ids).logits
        assert _rel(logits, expected) <= tol
        # prefill, then two one-token steps from the cache: the logits of one parallel pass
        prefill, cache = _forward_with_cache(model, ids[:, :19])
        assert _rel(prefill, expected[:, :19]) <= tol
        for t, exp in zip((19, 20), expected_next, strict=True):
            step, cache = _forward_with_cache(model, ids[:, t : t + 1], cache)
            assert _rel(step, exp) <= tol
            assert _rel(step, expected[:, t : t + 1]) <= tol


# --- full size on a GPU ------------------------------------------------------------------------

FULL = dict(h=64, p=64, g=1, n=128)  # Mamba-2-1.3B's mixer


def _fla_available():
    try:
        import fla.ops.simple_gla  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.gpu
@pytest.mark.parametrize("implementation", ["triton", "fla"])
@pytest.mark.parametrize("dtype,b,l", [(torch.bfloat16, 1, 2048 + 17), (torch.bfloat16, 2, 1000), (torch.float32, 2, 777)])
def test_gpu_chunk_scan_matches_reference(implementation, dtype, b, l):
    if implementation == "fla" and not _fla_available():
        pytest.skip("fla is not installed")
    x, dt, A, B, C, D, dt_bias, s0, z = _scan_inputs(b, l, FULL["h"], FULL["p"], FULL["g"], FULL["n"], dtype=dtype,
                                                     seed=l, device="cuda")
    kw = dict(D=D, dt_bias=dt_bias, initial_states=s0, dt_softplus=True, dt_limit=(0.0, INF))
    y, final = ssd_chunk_scan(x, dt, A, B, C, 256, implementation=implementation, return_final_states=True, **kw)
    y_ref, final_ref = ref.ssd_chunk_scan(x, dt, A, B, C, 256, return_final_states=True, **kw)
    # this project's kernels take IEEE fp32 products for fp32 inputs; fla's may run them as TF32
    tol = 2e-3 if (implementation, dtype) == ("fla", torch.float32) else TOL[dtype]
    assert y.dtype == dtype and final.dtype == torch.float32
    assert _rel(y, y_ref) <= tol
    assert _rel(final, final_ref) <= tol
    y_z = ssd_chunk_scan(x, dt, A, B, C, 256, z=z, implementation=implementation, **kw)
    assert _rel(y_z, ref.ssd_chunk_scan(x, dt, A, B, C, 256, z=z, **kw)) <= tol


@pytest.mark.gpu
@pytest.mark.parametrize("fused_states", [False, True])
@pytest.mark.parametrize("precompute_cb", [True, False])
@pytest.mark.parametrize("chunk", [64, 128, 256])
def test_gpu_triton_views_of_one_projection_and_chunk_lengths(chunk, precompute_cb, fused_states):
    h, p, g, n = FULL["h"], FULL["p"], FULL["g"], FULL["n"]
    x, B, C, dt = (t.cuda() for t in _projection_views(2, 1500, h, p, g, n, dtype=torch.bfloat16, seed=chunk))
    _, _, A, _, _, D, dt_bias, s0, _ = _scan_inputs(2, 1, h, p, g, n, seed=1, device="cuda")
    kw = dict(D=D, dt_bias=dt_bias, initial_states=s0, dt_softplus=True, return_final_states=True)
    y, final = tssd.ssd_chunk_scan(x, dt, A, B, C, 256, config=tssd.SSDConfig(chunk=chunk, precompute_cb=precompute_cb, fused_states=fused_states), **kw)
    y_ref, final_ref = ref.ssd_chunk_scan(x, dt, A, B, C, 256, **kw)
    assert _rel(y, y_ref) <= 2e-2 and _rel(final, final_ref) <= 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("fused_states", [False, True])
def test_gpu_triton_offsets_past_32_bits(fused_states):
    # 2^19 + 17 tokens of one projection: token offsets times the row stride exceed 2^31 elements
    # in the inputs and in the output (about 50 GB of GPU memory with the fp32 reference)
    h, p, g, n = FULL["h"], FULL["p"], FULL["g"], FULL["n"]
    l = (1 << 19) + 17
    gen = torch.Generator(device="cuda").manual_seed(0)
    proj = torch.randn(1, l, h * p + 2 * g * n + h, device="cuda", generator=gen).to(torch.bfloat16)
    x, B, C, dt = proj.split([h * p, g * n, g * n, h], dim=-1)
    x, B, C = x.view(1, l, h, p), B.view(1, l, g, n), C.view(1, l, g, n)
    assert (l - 1) * x.stride(1) >= 2**31 and (l - 1) * h * p >= 2**31
    _, _, A, _, _, D, dt_bias, _, _ = _scan_inputs(1, 1, h, p, g, n, seed=2, device="cuda")
    kw = dict(D=D, dt_bias=dt_bias, dt_softplus=True, return_final_states=True)
    y, final = tssd.ssd_chunk_scan(x, dt, A, B, C, 256, config=tssd.SSDConfig(fused_states=fused_states), **kw)
    y_ref, final_ref = ref.ssd_chunk_scan(x, dt, A, B, C, 256, **kw)
    assert _rel(y[:, -3000:], y_ref[:, -3000:]) <= 2e-2 and _rel(final, final_ref) <= 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_step_matches_reference(dtype):
    b, h, p, g, n = 8, FULL["h"], FULL["p"], FULL["g"], FULL["n"]
    x, dt, A, B, C, D, dt_bias, s0, z = _scan_inputs(b, 1, h, p, g, n, dtype=dtype, seed=3, device="cuda")
    args = (x[:, 0], dt.transpose(1, 2).expand(-1, -1, p), A[:, None, None].expand(-1, p, n), B[:, 0], C[:, 0])
    kw = dict(D=D[:, None].expand(-1, p), z=z[:, 0], dt_bias=dt_bias[:, None].expand(-1, p), dt_softplus=True)
    state, state_ref = s0.clone(), s0.clone()
    y = ssd_state_update(state, *args, **kw)
    y_ref = ref.ssd_state_update(state_ref, *args, **kw)
    assert _rel(y, y_ref) <= TOL[dtype] and _rel(state, state_ref) <= 1e-5


@interpreter
def test_triton_backend_refuses_float64(monkeypatch):
    monkeypatch.setenv("JRT_KERNELS", "triton")
    x, dt, A, B, C, *_ = _scan_inputs(1, 4, 4, 16, 2, 16, dtype=torch.float64)
    with pytest.raises(JRTError, match="hidden_states is float64"):
        ssd_chunk_scan(x, dt, A, B, C, 16)


@interpreter
def test_accelerated_tiny_mamba2_with_left_padding_equals_transformers(monkeypatch):
    # through jrt_prompt.accelerate (it puts the SSD ops and the conv kernels in transformers' place)
    from jrt_prompt.models.accelerate import accelerate, restore

    model = _tiny_mamba2()
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        expected_tokens = model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
    monkeypatch.setenv("JRT_KERNELS", "triton")
    monkeypatch.setattr("jrt_prompt.kernels.ssd.triton.DEFAULT_CONFIG", SMALL)
    calls = []
    real = tssd.ssd_chunk_scan
    monkeypatch.setattr(tssd, "ssd_chunk_scan", lambda *a, **k: calls.append(1) or real(*a, **k))
    try:
        accelerate(model)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
            tokens = model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
    finally:
        restore()
    assert calls, "the SSD kernels were not called"
    assert _rel(logits[0], expected[0]) <= 1e-4
    assert _rel(logits[1, 5:], expected[1, 5:]) <= 1e-4
    assert torch.equal(tokens, expected_tokens)


def test_ssd_config_rejects_launch_parameters_the_kernels_cannot_take():
    with pytest.raises(JRTError, match="SSDConfig.chunk=100"):
        tssd.SSDConfig(chunk=100)
    with pytest.raises(JRTError, match="SSDConfig.block_k=8"):
        tssd.SSDConfig(block_k=8)
    with pytest.raises(JRTError, match="SSDConfig.num_warps=3"):
        tssd.SSDConfig(num_warps=3)
    assert tssd.SSDConfig(chunk=128).chunk == 128
