"""What produced a results file: package versions, git commit, device (recorded by ``jrt eval`` and
``jrt score`` next to their settings, as lm-eval-harness does)."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# Distribution name -> key in the record.
_PACKAGES = {
    "jrt-prompt": "jrt-prompt",
    "torch": "torch",
    "transformers": "transformers",
    "flash-linear-attention": "fla",
    "triton": "triton",
    "datasets": "datasets",
    "mamba-ssm": "mamba-ssm",
    "causal-conv1d": "causal-conv1d",
}


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape the numbers (None: not installed)."""
    out: dict[str, str | None] = {}
    for dist, key in _PACKAGES.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    out["python"] = platform.python_version()
    return out


def git_commit() -> str | None:
    """The commit of the jrt-prompt checkout in use (``+dirty`` with local changes); None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_info(device: Any) -> dict[str, Any]:
    """The device a model ran on, by name (GPU model, or the CPU's architecture and thread count)."""
    info: dict[str, Any] = {"device": str(device)}
    try:
        import torch

        if str(device).startswith("cuda") and torch.cuda.is_available():
            index = torch.device(device).index or 0
            info["name"] = torch.cuda.get_device_name(index)
            info["cuda"] = torch.version.cuda
        else:
            info["name"] = platform.processor() or platform.machine()
            info["threads"] = torch.get_num_threads()
    except Exception:  # a record is best effort; never fail a run over it
        pass
    return info


def record(device: Any) -> dict[str, Any]:
    return {"versions": versions(), "git_commit": git_commit(), "device": device_info(device)}
