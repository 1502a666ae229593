import os

# Triton kernels are checked on CPU through Triton's interpreter. The variable must be set before
# anything imports triton, so it is set here, before the test modules are collected.
import torch  # noqa: E402  (importing torch does not import triton)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# Tests never reach a model hub: loading must come from local directories.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def force_triton(monkeypatch):
    """Run this project's Triton kernels through Triton's interpreter (CPU only: on a GPU the
    `gpu` tests cover the compiled kernels)."""
    if torch.cuda.is_available():
        pytest.skip("interpreter tests run on CPU only (the gpu tests cover the compiled kernels)")
    assert os.environ.get("TRITON_INTERPRET") == "1"
    monkeypatch.setenv("JRT_KERNELS", "triton")


@pytest.fixture
def accelerated():
    """``accelerate`` (this project's kernels wired into transformers' Mamba modules, as
    ``load_model`` does on a GPU), with transformers' own functions put back after the test."""
    from jrt_prompt.models.accelerate import accelerate, restore

    yield accelerate
    restore()


@pytest.fixture(scope="session")
def byte_tokenizer():
    from jrt_prompt.tokenization import build_byte_tokenizer

    return build_byte_tokenizer()
