#!/usr/bin/env python
"""Compile the Mamba-2 SSD kernels for a GPU architecture without a GPU and print what ptxas reports
(registers per thread, spills) for each launch of the chunked scan and for the step.

    python scripts/ssd_kernel_resources.py                          # sm_90a, bf16, SSDConfig defaults, chunk 256
    python scripts/ssd_kernel_resources.py --dtype fp32 --warps 4 --block-k 64
"""

from __future__ import annotations

import argparse
import dataclasses
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

from jrt_prompt.kernels.ssd import triton as tssd  # noqa: E402

_DOT = {"bf16": (tl.bfloat16, None), "fp16": (tl.float16, None), "fp32": (tl.float32, "ieee")}
# pointers to the inputs (the dtype under test); every other pointer is a float32 buffer or parameter
_INPUTS = ("x_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr")


def _signature(kernel, dtype: str, constants: dict, inputs=_INPUTS) -> dict[str, str]:
    sig = {}
    for name in kernel.arg_names:
        if name in constants:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + dtype if name in inputs else "*fp32"
        elif name in ("dt_min", "dt_max"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def ptxas_report(kernel, constants: dict, *, dtype: str, arch: int, warps: int, stages: int, inputs=_INPUTS):
    source = ASTSource(fn=kernel, signature=_signature(kernel, dtype, constants, inputs), constexprs=constants)
    compiled = triton.compile(
        source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages}
    )
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    candidates = sorted((p for p in bin_dir.glob("ptxas*") if p.is_file()), key=lambda p: p.name, reverse=True)
    if not candidates:
        raise SystemExit(f"no ptxas under {bin_dir}: install a triton wheel that ships one")
    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        for ptxas in candidates:
            run = subprocess.run(
                [str(ptxas), "-v", f"--gpu-name={gpu}", str(ptx), "-o", os.devnull], capture_output=True, text=True
            )
            if run.returncode == 0:
                return [
                    line.split(":", 1)[-1].strip()
                    for line in run.stderr.splitlines()
                    if "registers" in line or "spill" in line
                ]
    raise SystemExit(f"no ptxas under {bin_dir} assembled the kernel: {run.stderr.strip()[-300:]}")


def main(argv=None) -> int:
    d = tssd.DEFAULT_CONFIG
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=sorted(_DOT), default="bf16")
    p.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (H100/H200) or 80")
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--state", type=int, default=128)
    p.add_argument("--block-m", type=int, default=d.block_m)
    p.add_argument("--block-k", type=int, default=d.block_k)
    p.add_argument("--block-n", type=int, default=d.block_n)
    p.add_argument("--warps", type=int, default=d.num_warps)
    p.add_argument("--stages", type=int, default=d.num_stages)
    p.add_argument("--inline-cb", action="store_true", help="C B^T inside the output kernel (precompute_cb=False)")
    p.add_argument("--fused-states", action="store_true", help="chunk states and carry in one kernel")
    args = p.parse_args(argv)
    cfg = dataclasses.replace(
        d, chunk=args.chunk, block_m=args.block_m, block_k=args.block_k, block_n=args.block_n,
        num_warps=args.warps, num_stages=args.stages, precompute_cb=not args.inline_cb,
        fused_states=args.fused_states,
    )
    dot, prec = _DOT[args.dtype]
    n_block = tssd._pow2(args.state)
    p_block = min(cfg.block_p, tssd._pow2(args.head_dim))
    launches = [
        ("dt / cumsum", tssd._dt_cumsum_kernel,
         dict(CHUNK=cfg.chunk, BLOCK_H=cfg.block_h, HAS_BIAS=True, SOFTPLUS=True), ("dt_ptr",)),
        ("chunk states", tssd._chunk_state_kernel,
         dict(CHUNK=cfg.chunk, BLOCK_K=cfg.block_k, BLOCK_P=p_block, BLOCK_N=min(cfg.block_n, n_block),
              DOT=dot, PREC=prec), _INPUTS),
        ("carry pass", tssd._state_pass_kernel, dict(CHUNK=cfg.chunk, BLOCK=cfg.block_pass, HAS_INIT=True), ()),
        ("output", tssd._chunk_out_kernel,
         dict(CHUNK=cfg.chunk, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, BLOCK_P=p_block, BLOCK_N=n_block,
              HAS_D=True, HAS_Z=False, HAS_CB=cfg.precompute_cb, DOT=dot, PREC=prec), _INPUTS),
        ("step", tssd._step_kernel,
         dict(BLOCK_P=16, BLOCK_N=n_block, HAS_D=True, HAS_Z=False, HAS_BIAS=True, SOFTPLUS=True),
         _INPUTS + ("dt_ptr",)),
    ]
    if cfg.fused_states:  # the start states are stored in the inputs' dtype
        launches[1:3] = [("states+carry", tssd._state_carry_kernel,
                          dict(CHUNK=cfg.chunk, BLOCK_K=cfg.block_k, BLOCK_P=p_block,
                               BLOCK_N=min(cfg.block_n, n_block), HAS_INIT=True, DOT=dot, PREC=prec),
                          _INPUTS + ("sin_ptr",))]
    if cfg.precompute_cb:
        launches.insert(len(launches) - 2, ("C B^T", tssd._chunk_cb_kernel,
                            dict(CHUNK=cfg.chunk, BLOCK_M=cfg.block_m, BLOCK_N=min(n_block, cfg.block_n), DOT=dot, PREC=prec),
                            _INPUTS))
    print(f"sm_{args.arch}, {args.dtype}, {cfg}")
    for name, kernel, constants, inputs in launches:
        warps = 4 if kernel in (tssd._dt_cumsum_kernel, tssd._state_pass_kernel, tssd._step_kernel) else cfg.num_warps
        lines = ptxas_report(kernel, constants, dtype=args.dtype, arch=args.arch, warps=warps,
                             stages=cfg.num_stages, inputs=inputs)
        print(f"{name:>13}: " + "; ".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
