"""The one-row linear: Triton == F.linear (interpreter on CPU, compiled on the GPU), and the
dispatch sends only what the kernel is for to it."""

import pytest
import torch
import torch.nn.functional as F

from jrt_prompt.kernels import linear as ops
from jrt_prompt.kernels.linear import reference as ref

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(37, 70), (5, 1030), (64, 16)])
def test_row_linear_triton_equals_reference(force_triton, dtype, bias, shape):
    from jrt_prompt.kernels.linear import triton as kernels

    torch.manual_seed(0)
    # n and k neither powers of two nor multiples of the tiles (or k past one 1024-wide tile);
    # x a strided slice, as a projection's output sliced by the next layer is
    n, k = shape
    w = torch.randn(n, k).to(dtype)
    b = torch.randn(n).to(dtype) if bias else None
    x = torch.randn(1, 3 * k).to(dtype)[:, k : 2 * k]
    for config in (None, dict(BLOCK_N=16, BLOCK_K=32, num_warps=4, num_stages=1)):
        y = kernels.row_linear(x, w, b, config)
        expect = ref.linear_reference(x, w, b)
        assert y.dtype == dtype and y.shape == (1, n)
        assert _rel(y, expect) < TOL[dtype], config


def test_linear_op_keeps_leading_dims_and_falls_back(force_triton, monkeypatch):
    torch.manual_seed(1)
    w = torch.randn(24, 40)
    x = torch.randn(1, 1, 40)  # a decode step's [batch, 1, d]
    y = ops.linear(x, w)
    assert y.shape == (1, 1, 24) and _rel(y, F.linear(x, w)) < TOL[torch.float32]
    calls = []
    monkeypatch.setattr(ops, "linear_reference", lambda *a: calls.append(1) or F.linear(*a))
    ops.linear(torch.randn(2, 40), w)  # two rows: cuBLAS / F.linear
    ops.linear(torch.randn(1, 40), w.t().contiguous().t())  # weight strided along in: F.linear
    assert len(calls) == 2
    ops.linear(torch.randn(1, 40), w)
    assert len(calls) == 2


def test_linear_op_keeps_gradients(force_triton):
    """The kernel has no backward: a call that wants gradients (a parameter, grad mode on) is
    F.linear's, so training through a one-row call still reaches the weights."""
    layer = torch.nn.Linear(12, 5)
    x = torch.randn(1, 12)
    ops.linear(x, layer.weight, layer.bias).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert ops._kernel_fits(x, layer.weight, layer.bias)


def test_linear_op_is_f_linear_without_triton(monkeypatch):
    monkeypatch.setenv("JRT_KERNELS", "reference")
    w, b = torch.randn(5, 6), torch.randn(5)
    x = torch.randn(1, 6)
    assert torch.equal(ops.linear(x, w, b), F.linear(x, w, b))


def test_auto_choice_keeps_float32_and_cpu_on_f_linear(monkeypatch):
    """Unset JRT_KERNELS: float32 rows stay on cuBLAS / F.linear (no rounding differences against
    transformers in float32 tests); CPU tensors never reach Triton."""
    monkeypatch.delenv("JRT_KERNELS", raising=False)
    assert not ops._kernel_fits(torch.randn(1, 8), torch.randn(4, 8), None)
    assert not ops._kernel_fits(torch.randn(1, 8).bfloat16(), torch.randn(4, 8).bfloat16(), None)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(8192, 2048), (2048, 4096), (160, 4096), (4096, 128), (50280, 2048), (7168, 1792)])
def test_gpu_row_linear_equals_f_linear_at_model_sizes(shape):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from jrt_prompt.kernels.linear import triton as kernels

    torch.manual_seed(2)
    n, k = shape
    w = (torch.randn(n, k, device="cuda") / k**0.5).bfloat16()
    b = torch.randn(n, device="cuda").bfloat16()
    x = torch.randn(1, k, device="cuda").bfloat16()
    assert _rel(ops.linear(x, w, b), F.linear(x, w, b)) < TOL[torch.bfloat16]
    x32, w32 = x.float(), w.float()
    assert _rel(kernels.row_linear(x32, w32, None), F.linear(x32, w32)) < 1e-5
