"""The constant-state decode engine against transformers' generate (CPU, fp32, eager loop)."""

import pytest
import torch
from tiny_models import (
    EOS,
    PAD,
    VOCAB,
    _tiny,
    tiny_mamba_model,
    write_tiny_llama,
    write_tiny_mamba2,
    write_tiny_rwkv,
)

from jrt_prompt import generate, load_model
from jrt_prompt.generation import DecodeEngine, Generation, family_of, plan_batches
from jrt_prompt.generation import engine as engine_module
from jrt_prompt.models.modeling_jrt import JRTConfig, JRTForCausalLM, hazy_layer_schedule
from jrt_prompt.tokenization import build_byte_tokenizer

PROMPTS = [
    "The key is 42. What is the key?",
    "abc",
    "Alice signed the lease in Lyon; who signed it?",
    "x",
    "A much longer prompt, so that the batch needs a lot of left padding for the short ones.",
    "Numbers: 1 2 3 4 5 6 7 8 9 10 11 12",
    "zz",
]


def tiny_jrt(mixer: str, seed: int = 0, enc_length: int = 8) -> JRTForCausalLM:
    """A sharpened random JRT-RNN (``prefix_linear``) or Based model with the byte vocabulary; the
    sliding window (6) is shorter than some prompts and longer than others."""
    torch.manual_seed(seed)
    config = JRTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        layer_mixers=hazy_layer_schedule(5, mixer),
        intermediate_size=48,
        num_heads=4,
        feature_dim=4,
        enc_length=enc_length,
        attention_heads=4,
        sliding_window=6,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    model = JRTForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and name != "lm_head.weight":
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / p.shape[-1] ** 0.5))
    return model


FAMILIES = ["mamba", "falcon-mamba", "mamba2", "rwkv", "jrt-rnn", "based", "demo"]


def tiny_falcon_mamba():
    from transformers import FalconMambaConfig, FalconMambaForCausalLM

    return _tiny(
        FalconMambaConfig,
        FalconMambaForCausalLM,
        0,
        hidden_size=32,
        num_hidden_layers=2,
        state_size=8,
        expand=2,
        conv_kernel=4,
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    cache = {}

    def get(name):
        if name in cache:
            return cache[name]
        tokenizer = build_byte_tokenizer()
        if name == "mamba":
            out = (tiny_mamba_model(), tokenizer, True)
        elif name == "falcon-mamba":
            out = (tiny_falcon_mamba(), tokenizer, True)
        elif name == "jrt-rnn":
            out = (tiny_jrt("prefix_linear", enc_length=8), tokenizer, True)
        elif name == "based":
            out = (tiny_jrt("based"), tokenizer, True)
        else:
            if name == "demo":
                loaded = load_model("demo", device="cpu")
            else:
                writer = {"mamba2": write_tiny_mamba2, "rwkv": write_tiny_rwkv}[name]
                loaded = load_model(writer(tmp_path_factory.mktemp(name)), device="cpu")
            out = (loaded.model, loaded.tokenizer, loaded.adapter.supports_left_padding)
        cache[name] = out
        return out

    return get


def _rows(gens):
    return [(g.text, g.answer_tokens, g.finish_reason) for g in gens]


@pytest.mark.parametrize("name", FAMILIES)
def test_engine_equals_transformers_generate(models, name):
    model, tokenizer, padding = models(name)
    assert family_of(model) is not None
    kwargs = dict(max_new_tokens=12, stop=(), batch_size=4, supports_left_padding=padding)
    engine = generate(model, tokenizer, PROMPTS, path="engine", **kwargs)
    reference = generate(model, tokenizer, PROMPTS, path="transformers", **kwargs)
    assert _rows(engine) == _rows(reference)
    assert all(g.answer_tokens == 12 and g.finish_reason == "length" for g in engine)


@pytest.mark.parametrize("name", FAMILIES)
def test_engine_batched_equals_one_by_one(models, name):
    model, tokenizer, padding = models(name)
    kwargs = dict(max_new_tokens=10, stop=("\n",), supports_left_padding=padding, path="engine")
    batched = generate(model, tokenizer, PROMPTS, batch_size=8, **kwargs)
    single = [generate(model, tokenizer, [p], batch_size=1, **kwargs)[0] for p in PROMPTS]
    assert _rows(batched) == _rows(single)
    assert [g.prompt_tokens for g in batched] == [len(tokenizer(p)["input_ids"]) for p in PROMPTS]


@pytest.mark.parametrize("name", ["mamba", "jrt-rnn", "rwkv"])
def test_stop_strings_cut_where_transformers_cut(models, name):
    model, tokenizer, padding = models(name)
    free = generate(model, tokenizer, PROMPTS, max_new_tokens=30, stop=(), path="engine")
    checked = 0
    for prompt, g in zip(PROMPTS, free, strict=True):
        text = g.text
        # A stop string taken from inside the free answer (ending after a chunk boundary or not),
        # and one that never occurs next to it.
        for start in (1, 3, 5, 8, 11, 15):
            stop = text[start : start + 2]
            if len(stop) < 2 or "\ufffd" in stop:
                continue
            stops = (stop, "\x00never\x00")
            kwargs = dict(max_new_tokens=30, stop=stops, supports_left_padding=padding)
            engine = generate(model, tokenizer, [prompt, *PROMPTS], path="engine", batch_size=8, **kwargs)
            reference = generate(
                model, tokenizer, [prompt, *PROMPTS], path="transformers", batch_size=8, **kwargs
            )
            assert _rows(engine) == _rows(reference)
            assert engine[0].finish_reason == "stop"
            assert engine[0].text == text[: text.find(stop)]
            checked += 1
    assert checked >= 3


def test_eos_ends_a_row_as_transformers_does(models):
    model, tokenizer, _ = models("mamba")
    free = generate(model, tokenizer, PROMPTS, max_new_tokens=8, stop=(), path="engine")
    # Make the EOS id a token that the free answers generate, so rows end at it.
    token = tokenizer(free[0].text[3])["input_ids"][0]
    saved = tokenizer.eos_token_id
    try:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(token)
        engine = generate(model, tokenizer, PROMPTS, max_new_tokens=8, stop=(), path="engine")
        reference = generate(model, tokenizer, PROMPTS, max_new_tokens=8, stop=(), path="transformers")
    finally:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(saved)
    assert _rows(engine) == _rows(reference)
    assert engine[0].finish_reason == "eos"


def test_compaction_keeps_every_answer(models, monkeypatch):
    model, tokenizer, _ = models("jrt-rnn")
    prompts = [f"{p} {i}" for i, p in enumerate(PROMPTS * 3)]
    free = generate(model, tokenizer, prompts, max_new_tokens=24, stop=(), path="engine", batch_size=32)
    stops = tuple(sorted({g.text[2:4] for g in free if len(g.text) >= 4 and "\ufffd" not in g.text[2:4]}))
    monkeypatch.setattr(engine_module, "MIN_COMPACT_SLOTS", 1)
    engine = DecodeEngine(model, tokenizer, family_of(model), steps_per_sync=3)
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    got = engine.generate_batch(encoded, max_new_tokens=24, stop=stops, slots_limit=32, pad_id=PAD)
    reference = generate(
        model, tokenizer, prompts, max_new_tokens=24, stop=stops, path="transformers", batch_size=32
    )
    assert _rows(got) == _rows(reference)
    sizes = {key[1] for key in engine_module._GRAPHS[model] if isinstance(key, tuple)}
    assert 32 in sizes and min(sizes) < 32  # the batch moved to smaller slot sizes


def test_generation_fields():
    g = Generation(" guava", 10, 2, 0.5, "stop", 0.2)
    assert (g.text, g.continuation, g.answer, g.seconds, g.batch_seconds, g.row_seconds) == (
        " guava",
        " guava",
        "guava",
        0.5,
        0.5,
        0.2,
    )


def test_rows_get_their_own_time(models):
    model, tokenizer, _ = models("mamba")
    for path in ("engine", "transformers"):
        gens = generate(model, tokenizer, PROMPTS, max_new_tokens=6, stop=(), path=path, batch_size=8)
        assert all(0 < g.row_seconds <= g.batch_seconds for g in gens)
        if path == "engine":  # one decode batch whatever the lengths: one wall time for all
            assert len({g.batch_seconds for g in gens}) == 1


def test_transformers_keep_transformers_generate(tmp_path):
    loaded = load_model(write_tiny_llama(tmp_path / "llama"), device="cpu")
    assert family_of(loaded.model) is None
    assert family_of(tiny_jrt("prefix_linear")) is not None
    with pytest.raises(Exception, match="does not cover LlamaForCausalLM"):
        generate(loaded.model, loaded.tokenizer, ["abc"], path="engine")
    auto = generate(loaded.model, loaded.tokenizer, PROMPTS, max_new_tokens=5, stop=())
    assert _rows(auto) == _rows(
        generate(loaded.model, loaded.tokenizer, PROMPTS, max_new_tokens=5, stop=(), path="transformers")
    )


def test_plan_batches_caps_padding():
    lengths = [5, 3, 5, 3, 2]
    assert plan_batches(lengths, 8, equal_lengths=True) == [[0, 2], [1, 3], [4]]
    assert plan_batches(lengths, 2) == [[0, 2], [1, 3], [4]]
    assert plan_batches(lengths, 8) == [[0, 2, 1, 3], [4]]  # 2 < half of 5: not padded up to it
    assert plan_batches(lengths, 8, min_fill=0.0) == [[0, 2, 1, 3, 4]]
    # Never more than max_tokens padded tokens, and a short row never waits on a huge one.
    assert plan_batches([1000, 990, 980, 40, 30], 8, max_tokens=2000) == [[0, 1], [2], [3, 4]]


@pytest.mark.parametrize("name", ["based", "jrt-rnn", "mamba"])
def test_harness_mode_through_the_engine_is_unchanged(models, name, monkeypatch):
    from jrt_prompt.generation import harness

    model, tokenizer, _ = models(name)
    prompts = [p * 3 for p in PROMPTS]
    kwargs = dict(batch_size=3, max_new_tokens=10, until="", enc_length=16)
    engine = harness.harness_generate(model, tokenizer, prompts, **kwargs)
    monkeypatch.setattr(harness, "family_of", lambda model: None)  # the plain loop / generate
    plain = harness.harness_generate(model, tokenizer, prompts, **kwargs)
    assert engine == plain
    assert getattr(model.config, "inference_mode", "default") == "default"


def test_harness_mode_keeps_transformers_own_mamba_step(models, monkeypatch):
    from jrt_prompt.generation import families, harness, ssm_step

    model, tokenizer, _ = models("mamba")
    assert family_of(model) is families.HF_SSM_FUSED

    def refuse(*args):
        raise AssertionError("the harness mode decoded through the written-out step")

    monkeypatch.setattr(ssm_step, "fused_ssm_step", refuse)
    out = harness.harness_generate(model, tokenizer, PROMPTS[:2], batch_size=2, max_new_tokens=4, until="")
    assert len(out) == 2


def test_prefill_groups_respect_the_token_cap(models):
    model, tokenizer, _ = models("mamba2")
    engine = DecodeEngine(model, tokenizer, family_of(model), max_prefill_tokens=64)
    rows = sorted((tokenizer(p)["input_ids"] for p in PROMPTS), key=len, reverse=True)
    groups = engine._prefill_groups(rows)
    assert sorted(j for g in groups for j in g) == list(range(len(rows)))
    for group in groups:
        width = len(rows[group[0]])
        assert len(group) == 1 or (len(group) * width <= 64 and all(2 * len(rows[j]) >= width for j in group))
    capped = generate(
        model, tokenizer, PROMPTS, max_new_tokens=8, stop=(), path="engine", max_batch_tokens=64
    )
    free = generate(model, tokenizer, PROMPTS, max_new_tokens=8, stop=(), path="engine")
    assert _rows(capped) == _rows(free)


def test_bad_arguments_are_value_errors(models):
    model, tokenizer, _ = models("mamba")
    for kwargs, match in (
        (dict(max_new_tokens=0), "max_new_tokens=0"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(path="fastest"), "path 'fastest' is unknown"),
    ):
        with pytest.raises(ValueError, match=match):
            generate(model, tokenizer, ["abc"], **kwargs)
