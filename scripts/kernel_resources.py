#!/usr/bin/env python
"""Compile the prefill kernels for a GPU architecture without a GPU and print what ptxas reports
(registers per thread, spill stores and loads): a static view of register pressure.

    python scripts/kernel_resources.py                      # sm_90a, bf16, chunk 64, value block 64, 4 warps
    python scripts/kernel_resources.py --warps 8 --dtype fp16 --reduction
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from jrt_prompt.kernels.based import triton_prefill  # noqa: E402

_DTYPES = {"bf16": tl.bfloat16, "fp16": tl.float16, "fp32": tl.float32}
_INT_POINTERS = ("enc_len_ptr", "pair_i_ptr", "pair_j_ptr")


def _signature(kernel, dtype: str) -> dict[str, str]:
    sig = {}
    for name in kernel.arg_names:
        if name in ("q_ptr", "k_ptr", "v_ptr", "o_ptr"):
            sig[name] = "*" + dtype
        elif name == "mask_ptr":
            sig[name] = "*u8"
        elif name in _INT_POINTERS:
            sig[name] = "*i32"
        elif name.endswith("_ptr"):
            sig[name] = "*fp32"  # states
        elif name in ("eps", "scale1"):
            sig[name] = "fp32"
        elif name in ("N", "H", "DV", "tokens_per_split") or "stride" in name:
            sig[name] = "i32"
        else:
            sig[name] = "constexpr"
    return sig


def ptxas_report(
    kernel,
    *,
    dtype="bf16",
    arch=90,
    warps=4,
    stages=2,
    chunk=64,
    block_dv=64,
    reduction=False,
    inline=False,
    split=None,
):
    """ptxas's lines on registers and spills for one compiled configuration. ``inline``: the
    normaliser carried inside the kernel (as ``ChunkConfig(normaliser_block=0)`` launches it)
    instead of read from its own pass; ``split``: then its products as split bf16 products (None:
    as the launcher picks, i.e. the cyclic kernel with half-precision inputs)."""
    if split is None:
        split = kernel is triton_prefill._chunked_cyclic_kernel and dtype != "fp32"
    constants = dict(
        F=16,
        BT=chunk,
        BLOCK_DV=block_dv,
        WRITE_OUTPUT=not reduction,
        HAS_MASK=False,
        HAS_ENC_LEN=False,
        HAS_INIT=False,
        STORE_STATE=reduction,
        PRECISION="ieee" if dtype == "fp32" else "tf32",
        DOT_DTYPE=_DTYPES[dtype],
        STATE_DTYPE=tl.float32 if dtype == "fp16" else _DTYPES[dtype],
        NORM_SPLIT=split,
        NORM_DTYPE=tl.bfloat16,
        NORM_INLINE=inline,
    )
    if kernel is triton_prefill._chunked_kernel:
        constants.update(NP=128)
    source = ASTSource(fn=kernel, signature=_signature(kernel, dtype), constexprs=constants)
    compiled = triton.compile(
        source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages}
    )
    # Triton ships more than one ptxas; the PTX version it emits needs the newest of them.
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    candidates = sorted(
        (p for p in bin_dir.glob("ptxas*") if p.is_file()), key=lambda p: p.name, reverse=True
    )
    if not candidates:
        raise SystemExit(f"no ptxas under {bin_dir}: install a triton wheel that ships one")
    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        for ptxas in candidates:
            run = subprocess.run(
                [str(ptxas), "-v", f"--gpu-name={gpu}", str(ptx), "-o", os.devnull],
                capture_output=True,
                text=True,
            )
            if run.returncode == 0:
                return [
                    line.split(":", 1)[-1].strip()
                    for line in run.stderr.splitlines()
                    if "registers" in line or "spill" in line
                ]
    raise SystemExit(f"no ptxas under {bin_dir} assembled the kernel: {run.stderr.strip()[-300:]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    p.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (H100/H200) or 80")
    p.add_argument("--warps", type=int, default=4)
    p.add_argument("--stages", type=int, default=2)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--block-dv", type=int, default=64)
    p.add_argument(
        "--reduction", action="store_true", help="the state-only pass (PLA encoder) instead of the causal one"
    )
    p.add_argument(
        "--normaliser",
        choices=("pass", "inline", "split", "fp32"),
        default="pass",
        help="the normaliser: in its own pass (shipped default); inside the kernel with products as"
        " the launcher picks them (split in the cyclic kernel only); inside, split; inside, fp32",
    )
    args = p.parse_args(argv)
    for name, kernel in (
        ("onehot", triton_prefill._chunked_kernel),
        ("cyclic", triton_prefill._chunked_cyclic_kernel),
    ):
        lines = ptxas_report(
            kernel,
            dtype=args.dtype,
            arch=args.arch,
            warps=args.warps,
            stages=args.stages,
            chunk=args.chunk,
            block_dv=args.block_dv,
            reduction=args.reduction,
            inline=args.normaliser != "pass",
            split={"pass": None, "inline": None, "split": True, "fp32": False}[args.normaliser],
        )
        print(f"{name:7s} | " + " ; ".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
