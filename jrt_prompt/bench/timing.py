"""GPU timing: CUDA events, warm-ups first, median of repeats; optional CUDA-graph replay."""

from __future__ import annotations

import gc
import platform
import statistics
from collections.abc import Callable

import torch

from jrt_prompt.errors import JRTError


def sync(device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device) -> None:
    """Drop unreferenced tensors and hand cached CUDA blocks back between benchmark rows."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def exception_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (cut at 200 characters), for a row's note."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def error_note(exc: BaseException) -> str:
    """A benchmark row's note for a failure: "out of GPU memory", or the exception's first line."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of GPU memory"
    return exception_line(exc)


def bench_device(device: str | None, job: str) -> str:
    """The device a ``jrt bench`` job runs on: ``device`` when given, else CUDA; without a GPU,
    one line naming the job."""
    if device is not None:
        return device
    if not torch.cuda.is_available():
        raise JRTError(f"jrt bench {job} needs a CUDA GPU; none is visible (check CUDA_VISIBLE_DEVICES)")
    return "cuda"


def require_cuda() -> torch.device:
    if not torch.cuda.is_available():
        raise JRTError("this benchmark needs a CUDA GPU; none is visible (check CUDA_VISIBLE_DEVICES)")
    return torch.device("cuda")


def time_ms(fn: Callable[[], object], *, warmup: int = 3, reps: int = 10) -> dict:
    """Median/mean/min milliseconds of ``fn()``, each repeat timed with its own pair of events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {
        "median": statistics.median(times),
        "mean": statistics.fmean(times),
        "min": min(times),
        "reps": reps,
    }


def time_graph_ms(fn: Callable[[], object], *, steps: int = 20, warmup: int = 3, reps: int = 10) -> dict:
    """Per-call milliseconds of ``fn`` captured ``steps`` times in one CUDA graph (no launch gaps)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(steps):
            fn()
    res = time_ms(graph.replay, warmup=warmup, reps=reps)
    return {key: (val / steps if key != "reps" else val) for key, val in res.items()}


def environment() -> dict:
    """Device and versions, for the record next to every table."""
    import triton

    info = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "python": platform.python_version(),
    }
    try:
        import fla

        info["fla"] = getattr(fla, "__version__", "unknown")
    except Exception:  # fla is optional; its absence is recorded, not an error
        info["fla"] = None
    try:
        info["cudnn"] = torch.backends.cudnn.version()
    except Exception:
        info["cudnn"] = None
    return info
