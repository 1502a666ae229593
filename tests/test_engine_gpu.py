"""The decode engine on a CUDA GPU: the CUDA-graph path against the eager loop, bf16 agreement.

Run on the device: ``HF_HUB_OFFLINE=1 python -m pytest -q -m gpu -rA -s tests/test_engine_gpu.py``
(``-s`` shows the bf16 agreement shares).
"""

import random

import pytest
import torch
from test_engine import PROMPTS, tiny_falcon_mamba, tiny_jrt
from tiny_models import PAD, tiny_mamba_model, write_tiny_gla, write_tiny_mamba2, write_tiny_rwkv

from jrt_prompt import generate, load_model
from jrt_prompt.generation import DecodeEngine, family_of, release_graphs
from jrt_prompt.generation import engine as engine_module
from jrt_prompt.tokenization import build_byte_tokenizer

pytestmark = pytest.mark.gpu

FAMILIES = ["mamba", "falcon-mamba", "mamba2", "rwkv", "jrt-rnn", "based", "demo"]


def _model(name, tmp_path, dtype=torch.float32):
    tokenizer = build_byte_tokenizer()
    if name == "mamba":
        model = tiny_mamba_model()
    elif name == "falcon-mamba":
        model = tiny_falcon_mamba()
    elif name in ("jrt-rnn", "based"):
        model = tiny_jrt("prefix_linear" if name == "jrt-rnn" else "based")
    elif name == "gla":
        pytest.importorskip("fla")
        model = load_model(write_tiny_gla(tmp_path / name), device="cuda").model
    elif name == "demo":
        model = load_model("demo", device="cpu").model
    else:
        writer = {"mamba2": write_tiny_mamba2, "rwkv": write_tiny_rwkv}[name]
        model = load_model(writer(tmp_path / name), device="cpu").model
    return model.to("cuda", dtype=dtype).eval(), tokenizer


def _random_prompts(count, seed=0):
    rng = random.Random(seed)
    words = ["key", "value", "lease", "Lyon", "signed", "the", "is", "what", "42", "garden", "guava", "who"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) + "?" for _ in range(count)]


def _rows(gens):
    return [(g.text, g.answer_tokens, g.finish_reason) for g in gens]


@pytest.mark.parametrize("name", [*FAMILIES, "gla"])
def test_graph_path_equals_eager_path_fp32(name, tmp_path, monkeypatch):
    model, tokenizer = _model(name, tmp_path)
    family = family_of(model)
    assert family is not None
    prompts = _random_prompts(40, seed=1) + PROMPTS
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    stops = ("\n", "e t")
    monkeypatch.setattr(engine_module, "MIN_COMPACT_SLOTS", 1)  # compaction under graphs too
    out = {}
    for graphs in (False, True):
        release_graphs(model)
        engine = DecodeEngine(model, tokenizer, family, use_graphs=graphs, steps_per_sync=4)
        gens = []
        for start in range(0, len(encoded), 16):  # several batches: the graphs are replayed again
            gens += engine.generate_batch(
                encoded[start : start + 16], max_new_tokens=24, stop=stops, slots_limit=16, pad_id=PAD
            )
        out[graphs] = _rows(gens)
        if graphs:  # every decoder really replayed a captured graph (no eager fallback)
            decoders = [d for k, d in engine_module._GRAPHS[model].items() if isinstance(k, tuple)]
            assert decoders and all(isinstance(d.graph, torch.cuda.CUDAGraph) for d in decoders)
    assert out[True] == out[False]
    ids = torch.tensor([encoded[0]], device="cuda")
    eager = DecodeEngine(model, tokenizer, family, use_graphs=False).greedy_ids(ids, 20)[0]
    graph = DecodeEngine(model, tokenizer, family, use_graphs=True).greedy_ids(ids, 20)[0]
    assert torch.equal(eager, graph)


@pytest.mark.parametrize("name", [*FAMILIES, "gla"])
def test_engine_equals_transformers_generate_on_gpu_fp32(name, tmp_path):
    model, tokenizer = _model(name, tmp_path)
    prompts = _random_prompts(24, seed=2)
    kwargs = dict(max_new_tokens=16, stop=("\n",), batch_size=8)
    if name == "rwkv":
        kwargs["supports_left_padding"] = False
    assert _rows(generate(model, tokenizer, prompts, path="engine", **kwargs)) == _rows(
        generate(model, tokenizer, prompts, path="transformers", **kwargs)
    )


@pytest.mark.parametrize("name", [*FAMILIES, "gla"])
def test_bf16_answers_agree_with_transformers_generate(name, tmp_path, accelerated):
    """Share of identical answers, graph engine vs transformers' generate, both bf16 (target ≥ 98%).

    The model is accelerated as ``load_model`` does on a GPU, so ``generate`` runs the same scan and
    state kernels as the engine (unaccelerated, transformers' fallback keeps a bf16 state and rounds
    dt to bf16: other numbers, not the engine's to match)."""
    model, tokenizer = _model(name, tmp_path, dtype=torch.bfloat16)
    model = accelerated(model)
    prompts = _random_prompts(300, seed=3)
    kwargs = dict(max_new_tokens=24, stop=("\n",), batch_size=32)
    if name == "rwkv":
        kwargs["supports_left_padding"] = False
    engine = generate(model, tokenizer, prompts, path="engine", **kwargs)
    reference = generate(model, tokenizer, prompts, path="transformers", **kwargs)
    same = sum(a.text == b.text for a, b in zip(engine, reference, strict=True)) / len(prompts)
    print(f"\nbf16 {name}: {100 * same:.1f}% of {len(prompts)} answers identical")
    assert same >= 0.98
