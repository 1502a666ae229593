"""Where a decode step's time goes: the CUDA-graph replay time of the engine's step and the
per-kernel CUDA time of one eager step (torch.profiler), for benchmark models at real sizes.

    python scripts/profile_decode.py mamba-1.4b,mamba2-1.3b 1,64
    JRT_DECODE_STEP=model python scripts/profile_decode.py mamba-1.4b 1   # the model's own step

Prints, per (model, batch): ms per step and tokens/s of the replayed graph (64 steps after a
256-token prompt), the number of kernels one step launches and their summed time, and the
largest kernels by time. Needs a CUDA GPU.
"""

import collections
import sys

import torch

from jrt_prompt.bench.model import build_model
from jrt_prompt.generation import DecodeEngine, family_of, release_graphs


def print_kernel_table(prof, top: int) -> None:
    """The number of CUDA kernels a profile saw, their summed time, and the ``top`` largest."""
    kernels = collections.defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = kernels[event.name[:70]]
            entry[0] += 1
            entry[1] += event.device_time_total
    count = sum(c for c, _ in kernels.values())
    total = sum(t for _, t in kernels.values())
    print(f"  {count} kernels, {total / 1e3:.3f} ms kernel time")
    for kernel, (c, t) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"   {c:5d} {t / 1e3:8.3f} ms  {kernel}")


def profile(name: str, batches: list[int]) -> None:
    model = build_model(name, device="cuda", dtype=torch.bfloat16)
    family = family_of(model)
    for b in batches:
        ids = torch.randint(0, 1000, (b, 256), device="cuda")
        engine = DecodeEngine(model, None, family)
        engine.greedy_ids(ids, 17)  # warm-up: graph capture
        _, _, seconds = engine.greedy_ids(ids, 65)
        print(
            f"{name} b{b} ({family.name}): graph {1e3 * seconds / 64:.3f} ms/step {b * 64 / seconds:.0f} tok/s"
        )
        with torch.inference_mode():
            logits, cache = family.prefill(model, ids, None)
            tokens = logits.argmax(-1)[:, None]
            for _ in range(3):
                family.step(model, cache, tokens)
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                family.step(model, cache, tokens)
                torch.cuda.synchronize()
        print_kernel_table(prof, 14)
        release_graphs(model)
    del model
    torch.cuda.empty_cache()


if __name__ == "__main__":
    if len(sys.argv) != 3 or not torch.cuda.is_available():
        sys.exit("usage (on a CUDA GPU): python scripts/profile_decode.py MODEL[,MODEL...] BATCH[,BATCH...]")
    for model_name in sys.argv[1].split(","):
        profile(model_name, [int(b) for b in sys.argv[2].split(",")])
