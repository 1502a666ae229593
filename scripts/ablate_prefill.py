#!/usr/bin/env python
"""Where the prefill kernel's time goes: time the shipped cyclic kernel with one part removed.

    python scripts/ablate_prefill.py --json ablate.json        # needs a CUDA GPU

Each variant is the source of jrt_prompt/kernels/based/triton_prefill.py with one part of the chunk
loop cut out (its results are wrong on purpose: timing only), timed on Based at 32k x 16 heads x
batch 16, bf16, default launch configuration. A variant runs in its own process, so a variant
the compiler mishandles cannot poison the others' CUDA context. With a part's read-out removed,
its state update becomes dead code too, so "no pair groups" is the pair features' whole cost.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCE = ROOT / "jrt_prompt" / "kernels" / "based" / "triton_prefill.py"
PACKAGE = "jrt_prompt.kernels.based"  # SOURCE's package, for its relative imports
_GROUP_CALL = r"        num, s_p\d = _cyc_group\(.*?\n.*?\n"

# variant -> (pattern, replacement) pairs applied to the kernel source. Variants named
# "inline_*" run with the normaliser inside the kernel (ChunkConfig(normaliser_block=0), the
# earlier form); the others with the shipped default (the normaliser in its own pass).
_DEN_CALL = r"den = _denominator\(den, qs, z0, z1, z2, den_ptr, pid_bh, N, t, t_ok,\s*NORM_INLINE, NORM_SPLIT, NORM_DTYPE\)"
_NORM_UPDATE = "z0, z1, z2 = _normaliser_update(z0, z1, z2, ks, w, NORM_SPLIT, NORM_DTYPE)"
VARIANTS: dict[str, list[tuple[str, str]]] = {
    "full": [],
    "no_pair_groups": [(_GROUP_CALL, "")],
    "no_intra_chunk": [
        (
            re.escape("num, den = _intra_chunk(qs, ks, v, w, offs_t, dtype, PRECISION)"),
            "num = tl.zeros([BT, BLOCK_DV], dtype=tl.float32)\n            den = tl.zeros([BT], dtype=tl.float32)",
        )
    ],
    "no_den_read": [(_DEN_CALL, "den = den + 1.0")],
    "inline_full": [],
    "inline_no_normaliser_read": [(_DEN_CALL, "den = den + z0")],
    "inline_no_normaliser_update": [(re.escape(_NORM_UPDATE), "z0 = z0 + tl.sum(w, 0)")],
}


def variant_source(name: str) -> str:
    """The kernel module's source with the variant's part removed (only in the cyclic kernel)."""
    text = SOURCE.read_text()
    start = text.index("def _chunked_cyclic_kernel(")
    end = re.compile(r"\n\n\n(?=\S)").search(text, start).start()  # the next top-level statement
    body = text[start:end]
    for pattern, replacement in VARIANTS[name]:
        body, count = re.subn(pattern, lambda _m, r=replacement: r, body)
        if count == 0:
            raise SystemExit(f"variant {name}: the kernel no longer contains {pattern!r}; update VARIANTS")
    text = text[:start] + body + text[end:]
    return re.sub(r"^from (\.+)([\w.]*) import", _absolute_import, text, flags=re.MULTILINE)


def _absolute_import(m: re.Match) -> str:
    """``from ..x import`` in SOURCE as ``from jrt_prompt.kernels.x import``: the variant runs as a
    module of its own, outside the package."""
    base = PACKAGE.split(".")[: len(PACKAGE.split(".")) + 1 - len(m.group(1))]
    return "from " + ".".join(base + ([m.group(2)] if m.group(2) else [])) + " import"


def time_variant(name: str, n: int, reps: int) -> float:
    import torch

    from jrt_prompt.bench.timing import require_cuda, time_ms

    device = require_cuda()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"ablate_{name}.py"
        path.write_text(variant_source(name))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
        q, k = (torch.randn(16, n, 16, 16, device=device, dtype=torch.bfloat16) for _ in range(2))
        v = torch.randn(16, n, 16, 64, device=device, dtype=torch.bfloat16)
        config = module.ChunkConfig(normaliser_block=0) if name.startswith("inline_") else None
        return time_ms(lambda: module.based_prefill(q, k, v, config=config), warmup=2, reps=reps)["median"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=32768)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--json", type=Path)
    p.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # one child process
    args = p.parse_args(argv)
    if args.variant:
        print(json.dumps({"ms": time_variant(args.variant, args.n, args.reps)}))
        return 0
    rows = {}
    for name in VARIANTS:
        run = subprocess.run(
            [sys.executable, __file__, "--variant", name, "--n", str(args.n), "--reps", str(args.reps)],
            capture_output=True,
            text=True,
        )
        lines = run.stdout.strip().splitlines()
        ms = json.loads(lines[-1])["ms"] if run.returncode == 0 and lines else None
        rows[name] = {"ms": ms} if ms is not None else {"ms": None, "error": run.stderr.strip()[-300:]}
        print(f"{name:22s} " + (f"{ms:8.3f} ms" if ms is not None else "failed: " + rows[name]["error"]))
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "batch": 16, "heads": 16, "variants": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
