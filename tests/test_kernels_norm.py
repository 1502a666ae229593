"""The decode step's normalisations: Triton == reference == transformers' own modules."""

import pytest
import torch

from jrt_prompt.errors import JRTError
from jrt_prompt.kernels import norm as ops
from jrt_prompt.kernels.norm import reference as ref

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _block(hidden, delta, norm, residual_in_fp32):
    """transformers' Mamba block around its mixer: the residual and the norm's input."""
    hidden = hidden if delta is None else hidden + delta
    residual = hidden.to(torch.float32) if residual_in_fp32 else hidden
    return residual, norm(hidden.to(dtype=norm.weight.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_residual_rms_norm_reference_is_transformers_block(dtype, residual_in_fp32):
    from transformers.models.mamba.modeling_mamba import MambaRMSNorm

    torch.manual_seed(0)
    norm = MambaRMSNorm(48, eps=1e-5).to(dtype)
    norm.weight.data = torch.randn(48).to(dtype)
    emb = torch.randn(3, 48).to(dtype)
    delta = torch.randn(3, 48).to(dtype)
    res_dtype = torch.float32 if residual_in_fp32 else dtype
    # the first layer (no delta), then a later one whose residual is the stream so far
    r0, h0 = _block(emb, None, norm, residual_in_fp32)
    s0, n0 = ref.residual_rms_norm_reference(
        emb, norm.weight, 1e-5, residual_dtype=res_dtype, norm_dtype=dtype, out_dtype=dtype
    )
    assert torch.equal(s0, r0) and torch.equal(n0, h0)
    r1, h1 = _block(r0, delta, norm, residual_in_fp32)
    s1, n1 = ref.residual_rms_norm_reference(
        r0, norm.weight, 1e-5, delta, residual_dtype=res_dtype, norm_dtype=dtype, out_dtype=dtype
    )
    assert torch.equal(s1, r1) and torch.equal(n1, h1)
    # the final norm reads the residual as it is and the head reads the result in its dtype
    final = norm(r1).to(dtype)
    _, nf = ref.residual_rms_norm_reference(
        r1, norm.weight, 1e-5, residual_dtype=res_dtype, norm_dtype=res_dtype, out_dtype=dtype
    )
    assert torch.equal(nf, final)


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_rms_norm_reference_is_transformers(groups, dtype):
    from transformers.models.mamba2.modeling_mamba2 import MambaRMSNormGated

    torch.manual_seed(1)
    norm = MambaRMSNormGated(64, group_size=64 // groups, eps=1e-5).to(dtype)
    norm.weight.data = torch.randn(64).to(dtype)
    x, z = torch.randn(5, 64).to(dtype), torch.randn(5, 64).to(dtype)
    out = ref.gated_rms_norm_reference(x, z, norm.weight, 1e-5, 64 // groups)
    assert torch.equal(out, norm(x, z))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [48, 64])
@pytest.mark.parametrize("final", [False, True])
def test_residual_rms_norm_triton_equals_reference(force_triton, dtype, d, final):
    torch.manual_seed(2)
    w = torch.randn(d).to(dtype)
    residual = torch.randn(3, d)  # float32 stream
    big = torch.randn(3, 2 * d).to(dtype)
    delta = big[:, :d]  # a strided view, as a projection's slice would be
    norm_dtype = torch.float32 if final else dtype
    args = dict(residual_dtype=torch.float32, norm_dtype=norm_dtype, out_dtype=dtype)
    s, n = ops.residual_rms_norm(residual, w, 1e-5, delta, **args)
    s_ref, n_ref = ref.residual_rms_norm_reference(residual, w, 1e-5, delta, **args)
    assert s.dtype == torch.float32 and n.dtype == dtype
    assert _rel(s, s_ref) < 1e-6
    assert _rel(n, n_ref) < TOL[dtype]
    # no delta: the first layer's input (embeddings in the weights' dtype)
    emb = torch.randn(2, d).to(dtype)
    s, n = ops.residual_rms_norm(emb, w, 1e-5, residual_dtype=torch.float32)
    s_ref, n_ref = ref.residual_rms_norm_reference(
        emb, w, 1e-5, residual_dtype=torch.float32, norm_dtype=dtype, out_dtype=dtype
    )
    assert torch.equal(s, s_ref) and _rel(n, n_ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("groups", [1, 2])
def test_gated_rms_norm_triton_equals_reference(force_triton, dtype, groups):
    torch.manual_seed(3)
    width = 96
    w = torch.randn(width).to(dtype)
    x = torch.randn(4, width).to(dtype)
    z = torch.randn(4, 3 * width).to(dtype)[:, width : 2 * width]
    out = ops.gated_rms_norm(x, z, w, 1e-6, width // groups)
    expect = ref.gated_rms_norm_reference(x, z, w, 1e-6, width // groups)
    assert out.dtype == dtype and _rel(out, expect) < TOL[dtype]


def test_norm_ops_refuse_bad_shapes_with_one_line():
    w = torch.ones(8)
    with pytest.raises(JRTError, match="residual must be"):
        ops.residual_rms_norm(torch.ones(2, 7), w, 1e-5)
    with pytest.raises(JRTError, match="group_size 3 must divide"):
        ops.gated_rms_norm(torch.ones(2, 8), torch.ones(2, 8), w, 1e-5, 3)
    with pytest.raises(JRTError, match="unit stride"):
        ops.gated_rms_norm(torch.ones(8, 2).t(), torch.ones(2, 8), w, 1e-5, 8)


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_norms_equal_reference_at_full_size(rows, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(4)
    w = torch.randn(2048, device="cuda").to(dtype)
    residual = torch.randn(rows, 2048, device="cuda")
    delta = torch.randn(rows, 2048, device="cuda").to(dtype)
    for norm_dtype in (dtype, torch.float32):
        args = dict(residual_dtype=torch.float32, norm_dtype=norm_dtype, out_dtype=dtype)
        s, n = ops.residual_rms_norm(residual, w, 1e-5, delta, **args)
        s_ref, n_ref = ref.residual_rms_norm_reference(residual, w, 1e-5, delta, **args)
        assert _rel(s, s_ref) < 1e-6 and _rel(n, n_ref) < TOL[dtype]
    wg = torch.randn(4096, device="cuda").to(dtype)
    x = torch.randn(rows, 4096, device="cuda").to(dtype)
    z = torch.randn(rows, 4096, device="cuda").to(dtype)
    assert (
        _rel(ops.gated_rms_norm(x, z, wg, 1e-5, 4096), ref.gated_rms_norm_reference(x, z, wg, 1e-5, 4096))
        < TOL[dtype]
    )
