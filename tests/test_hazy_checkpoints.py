"""Loading the hazyresearch checkpoints from tiny look-alikes written in their exact on-disk layout:
GPT2Config-style config.json dumps, pytorch_model.bin with the Lightning ``model.`` prefix, a
metrics counter and ``conv1`` names."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_modeling_jrt import naive_forward
from tiny_models import to_mamba_ssm_keys

from jrt_prompt.errors import JRTError
from jrt_prompt.generation import generate_loaded
from jrt_prompt.models.hazy_checkpoints import (
    clean_state_dict,
    hybrid_state_bytes,
    jrt_config_from_hazy,
)
from jrt_prompt.models.loading import get_adapter, load_model
from jrt_prompt.models.modeling_jrt import JRTConfig, JRTForCausalLM
from jrt_prompt.tokenization import build_byte_tokenizer

VOCAB = 258

CONV_MIXER = {
    "l_max": 2048,
    "_target_": "based.models.mixers.convolution.BaseConv",
    "use_bias": True,
    "expand_proj": 4,
    "kernel_sizes": 3,
}
PLA_MIXER = {
    "_target_": "based.models.mixers.prefix_linear_attention.PrefixLinearAttention",
    "l_max": 2048,
    "feature_dim": 4,
    "feature_name": "taylor_exp",
    "num_heads": 4,
    "num_key_value_heads": 4,
    "enc_length": 8,
    "dec_length": 8,
    "implementation": "fla_parallel",
    "use_mask": True,
}
BASED_MIXER = {
    "_target_": "based.models.mixers.linear_attention.LinearAttention",
    "l_max": 2048,
    "feature_map": {"_target_": "based.models.mixers.linear_attention.TaylorExp", "input_dim": 4},
    "feature_dim": 4,
    "num_heads": 4,
    "parallel_implementation": "fla_parallel",
}
SWA_MIXER = {
    "_target_": "based.models.mixers.slide_attention.SlidingAttention",
    "window_size": 6,
    "num_heads": 4,
    "causal": True,
    "use_mask": True,
}


def gpt2_dump(**fields) -> dict:
    """The fields a ``GPT2Config.to_dict()`` dump of the released configs carries."""
    config = {
        "activation_function": "swiglu",
        "architectures": None,
        "attn_pdrop": 0.0,
        "bos_token_id": 256,
        "embd_pdrop": 0.0,
        "eos_token_id": 256,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_positions": 0,
        "resid_pdrop": 0.0,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "vocab_size": VOCAB,
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_dropout_add_ln": True,
        "fused_bias_fc": True,
        "fused_mlp": False,
        "mlp_fc1_bias": False,
        "mlp_fc2_bias": False,
        "qkv_proj_bias": False,
        "out_proj_bias": False,
        "special_initializer": True,
        "transformers_version": "4.36.2",
    }
    config.update(fields)
    return config


def _random_weights(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "lm_head.weight":
                continue
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
            else:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))


def write_checkpoint(path: Path, config: dict, model: torch.nn.Module, *, conv1_layers=(), drop_head=False):
    """config.json + pytorch_model.bin as a Lightning run saves them, plus a tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, value in model.state_dict().items():
        if drop_head and key == "lm_head.weight":
            continue
        for i in conv1_layers:
            key = key.replace(f"layers.{i}.mixer.conv.conv.", f"layers.{i}.mixer.conv1.conv.")
        state["model." + key] = value.clone()
    state["model.train_metrics.num-tokens.count"] = torch.tensor(123.0)
    state["val_metrics.num-tokens.count"] = torch.tensor(45.0)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    torch.save(state, path / "pytorch_model.bin")
    build_byte_tokenizer().save_pretrained(path)
    return path


def hybrid_lookalike(path: Path, family: str, seed: int = 0):
    """A 6-layer JRT-RNN ('jrt') or Based ('based') checkpoint: linear at 1, 4; SWA at 2, 5."""
    alt = PLA_MIXER if family == "jrt" else BASED_MIXER
    config = gpt2_dump(
        n_embd=32,
        n_layer=6,
        n_head=4,
        n_inner=256,
        pad_vocab_size_multiple=8,
        rotary_emb_fraction=1,
        mixer=CONV_MIXER,
        alt_mixer=alt,
        alt_mixer_2=SWA_MIXER,
        alt_mixer_layers=[1, 4],
        alt_mixer_2_layers=[2, 5],
        **({"enc_length": 8, "dec_length": 8} if family == "jrt" else {}),
    )
    linear = "prefix_linear" if family == "jrt" else "based"
    ours = JRTConfig(
        vocab_size=VOCAB,
        pad_vocab_size_multiple=8,
        hidden_size=32,
        layer_mixers=["base_conv", linear, "sliding_window", "base_conv", linear, "sliding_window"],
        intermediate_size=256,
        num_heads=4,
        feature_dim=4,
        enc_length=8,
        attention_heads=4,
        sliding_window=3,
    )
    model = JRTForCausalLM(ours).eval()
    _random_weights(model, seed)
    return write_checkpoint(path, config, model, conv1_layers=(0, 3)), model


def attention_lookalike(path: Path, seed: int = 0, mlp_width: int = 128):
    """attn-style: no mixer dicts, rotary on half of each head, n_inner unset (8d/3 rounded)."""
    config = gpt2_dump(n_embd=32, n_layer=2, n_head=4, pad_vocab_size_multiple=16, rotary_emb_fraction=0.5)
    ours = JRTConfig(
        vocab_size=VOCAB,
        pad_vocab_size_multiple=16,
        hidden_size=32,
        layer_mixers=["attention", "attention"],
        intermediate_size=mlp_width,
        attention_heads=4,
        rotary_emb_fraction=0.5,
    )
    model = JRTForCausalLM(ours).eval()
    _random_weights(model, seed)
    return write_checkpoint(path, config, model), model


def mamba_lookalike(path: Path, seed: int = 0):
    """hazyresearch MambaConfig fields; mamba_ssm key names; Lightning prefix and metrics."""
    from transformers import MambaConfig, MambaForCausalLM

    hf = MambaForCausalLM(
        MambaConfig(
            vocab_size=272,
            hidden_size=32,
            num_hidden_layers=2,
            state_size=16,
            expand=2,
            conv_kernel=4,
            time_step_rank=2,
        )
    ).eval()
    _random_weights(hf, seed)
    config = {
        "d_model": 32,
        "n_layer": 2,
        "vocab_size": VOCAB,
        "ssm_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 16,
        "reorder_and_upcast_attn": False,
        "scale_attn_by_inverse_layer_idx": True,
        "n_positions": 2048,
        "n_embd": 1024,
        "n_head": 16,
        "use_flash_attn": True,
        "fused_dropout_add_ln": True,
        "fused_mlp": True,
        "fused_bias_fc": True,
        "use_fast_path": True,
    }

    class Renamed(torch.nn.Module):
        def state_dict(self):
            return to_mamba_ssm_keys(hf.state_dict())

    return write_checkpoint(path, config, Renamed()), hf


def _rewrite_tensor(path: Path, key: str, shape):
    state = torch.load(path / "pytorch_model.bin", weights_only=True)
    state[key] = torch.zeros(shape)
    torch.save(state, path / "pytorch_model.bin")


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["jrt", "based"])
def test_hybrid_lookalike_loads_by_path_and_matches_the_math(tmp_path, family):
    path, source = hybrid_lookalike(tmp_path / family, family)
    loaded = load_model(path, device="cpu")
    model = loaded.model
    assert isinstance(model, JRTForCausalLM)
    expected_linear = "prefix_linear" if family == "jrt" else "based"
    assert model.config.layer_mixers == [
        "base_conv",
        expected_linear,
        "sliding_window",
        "base_conv",
        expected_linear,
        "sliding_window",
    ]
    assert model.config.sliding_window == 3  # window_size 6 -> flash-attn window (3, 0)
    assert model.config.padded_vocab_size == 264
    ids = torch.randint(0, VOCAB, (2, 14))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, source(ids).logits)
        torch.testing.assert_close(model(ids).logits[0], naive_forward(model, ids[0]), atol=1e-4, rtol=1e-4)
    answer = generate_loaded(loaded, ["abc def"], max_new_tokens=4, stop=())[0]
    assert answer.answer_tokens == 4


def test_attention_lookalike_loads_with_mlp_width_rounded_to_128(tmp_path):
    # d=32, n_inner unset: 8d/3 = 85 -> 128 (multiple_of 128; 256 would also be accepted).
    path, source = attention_lookalike(tmp_path / "attn", mlp_width=128)
    loaded = load_model(path, device="cpu")
    assert loaded.adapter.name == "hazy_attention"
    model = loaded.model
    assert model.config.layer_mixers == ["attention", "attention"]
    assert model.config.intermediate_size == 128
    ids = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, source(ids).logits)
        # rotary on 4 of the 8 channels of each head, full causal attention
        torch.testing.assert_close(model(ids).logits[1], naive_forward(model, ids[1]), atol=1e-4, rtol=1e-4)


def test_mamba_lookalike_loads_by_path_into_transformers_mamba(tmp_path):
    from transformers import MambaForCausalLM

    path, source = mamba_lookalike(tmp_path / "mamba")
    loaded = load_model(path, device="cpu")
    assert loaded.adapter.name == "hazy_mamba"
    assert isinstance(loaded.model, MambaForCausalLM)
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, source(ids).logits)


@pytest.mark.parametrize(
    ("family", "key", "shape"),
    [
        ("jrt", "model.transformer.layers.1.mixer.proj_k_enc.weight", (20, 32)),
        ("based", "model.transformer.layers.4.mixer.proj_v.weight", (32, 30)),
        ("jrt", "model.transformer.layers.0.mlp.fc2.weight", (32, 512)),
        ("based", "model.transformer.layers.3.mixer.conv1.conv.weight", (128, 1, 4)),
    ],
)
def test_hybrid_shape_mismatch_names_the_key(tmp_path, family, key, shape):
    path, _ = hybrid_lookalike(tmp_path / family, family)
    _rewrite_tensor(path, key, shape)
    clean_key = key.removeprefix("model.").replace("conv1", "conv")
    with pytest.raises(JRTError) as info:
        load_model(path, device="cpu")
    message = str(info.value)
    assert clean_key in message and str(tuple(shape)) in message
    assert "\n" not in message


def test_attention_shape_mismatch_names_the_key(tmp_path):
    path, _ = attention_lookalike(tmp_path / "attn")
    _rewrite_tensor(path, "model.transformer.layers.1.mixer.Wqkv.weight", (90, 32))
    with pytest.raises(
        JRTError, match=r"transformer\.layers\.1\.mixer\.Wqkv\.weight.*\(90, 32\).*\(96, 32\)"
    ):
        load_model(path, device="cpu")


def test_mamba_shape_mismatch_names_the_key(tmp_path):
    path, _ = mamba_lookalike(tmp_path / "mamba")
    _rewrite_tensor(path, "model.backbone.layers.1.mixer.x_proj.weight", (30, 64))
    with pytest.raises(JRTError, match=r"backbone\.layers\.1\.mixer\.x_proj\.weight"):
        load_model(path, device="cpu")


def test_config_schedule_that_disagrees_with_the_keys_fails(tmp_path):
    path, _ = hybrid_lookalike(tmp_path / "jrt", "jrt")
    config = json.loads((path / "config.json").read_text())
    config["alt_mixer_layers"] = [1, 3]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(JRTError, match="layer 3"):
        load_model(path, device="cpu")


def test_config_width_that_disagrees_with_the_weights_fails(tmp_path):
    path, _ = hybrid_lookalike(tmp_path / "based", "based")
    config = json.loads((path / "config.json").read_text())
    config["n_embd"] = 48
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(JRTError, match=r"word_embeddings\.weight.*\(264, 32\).*n_embd=48"):
        load_model(path, device="cpu")


def test_key_edits_prefix_metrics_conv1_and_ln0_remap():
    t = {name: torch.tensor([float(i)]) for i, name in enumerate(["a", "b", "c", "d", "e", "f"])}
    state = {
        "model.transformer.ln_0.weight": t["a"],
        "model.transformer.layers.0.norm1.weight": t["b"],
        "model.transformer.layers.0.norm2.weight": t["c"],
        "model.transformer.layers.1.norm1.weight": t["d"],
        "model.transformer.layers.1.norm2.weight": t["e"],
        "model.transformer.layers.0.mixer.conv1.conv.weight": t["f"],
        "train_metrics.num-tokens.count": torch.tensor(1.0),
    }
    clean = clean_state_dict(state)
    assert clean == {
        "transformer.layers.0.norm1.weight": t["a"],
        "transformer.layers.0.norm2.weight": t["b"],
        "transformer.layers.1.norm1.weight": t["c"],
        "transformer.layers.1.norm2.weight": t["d"],
        "transformer.ln_f.weight": t["e"],
        "transformer.layers.0.mixer.conv.conv.weight": t["f"],
    }
    assert "transformer.layers.0.mixer.conv1.conv.weight" in clean_state_dict(state, rename_conv1=False)


def test_roster_names_resolve_through_the_models_dir(tmp_path, monkeypatch):
    hybrid_lookalike(tmp_path / "jrt-rnn-360m", "jrt")
    monkeypatch.setenv("JRT_MODELS_DIR", str(tmp_path))
    loaded = load_model("jrt-rnn-360m", device="cpu")
    assert "prefix_linear" in loaded.model.config.layer_mixers
    assert loaded.name == "jrt-rnn-360m"
    assert get_adapter("hazy_jrt").reads_prompt_twice
    assert not get_adapter("hazy_gpt").reads_prompt_twice
    assert get_adapter("hazy_jrt").detect(
        json.loads((tmp_path / "jrt-rnn-360m" / "config.json").read_text()), set()
    )


# --------------------------------------------------------------------------------------------
# The released configs' known fields (first part of the 1B hub configs + the training YAMLs)


def _jrt_1b_config():
    return gpt2_dump(
        vocab_size=50257,
        n_embd=1792,
        n_layer=36,
        n_head=16,
        n_inner=3584,
        bos_token_id=50256,
        eos_token_id=50256,
        pad_vocab_size_multiple=8,
        rotary_emb_fraction=1,
        mixer={**CONV_MIXER},
        alt_mixer={**PLA_MIXER, "feature_dim": 16, "num_heads": 16, "enc_length": 1024, "dec_length": 1024},
        alt_mixer_2={**SWA_MIXER, "window_size": 256, "num_heads": 16},
        alt_mixer_layers=[1, 6, 11, 16, 21, 27, 33],
        alt_mixer_2_layers=[2, 7, 12, 17, 22, 28, 34],
        enc_length=1024,
        dec_length=1024,
    )


def test_jrt_1b_config_builds_the_published_shapes():
    config = jrt_config_from_hazy(_jrt_1b_config())
    assert config.padded_vocab_size == 50264
    assert config.layer_mixers[27] == "prefix_linear" and config.layer_mixers[28] == "sliding_window"
    assert config.layer_mixers.count("base_conv") == 22
    assert config.sliding_window == 128 and config.enc_length == 1024
    with torch.device("meta"):
        model = JRTForCausalLM(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["transformer.embeddings.word_embeddings.weight"] == (50264, 1792)
    assert shapes["transformer.layers.0.mixer.in_proj.weight"] == (4 * 1792, 1792)
    assert shapes["transformer.layers.0.mixer.conv.conv.weight"] == (2 * 1792, 1, 3)
    assert shapes["transformer.layers.0.mixer.out_proj.weight"] == (1792, 2 * 1792)
    assert shapes["transformer.layers.1.mixer.proj_q.weight"] == (256, 1792)
    assert shapes["transformer.layers.1.mixer.proj_v_enc.weight"] == (1792, 1792)
    assert shapes["transformer.layers.2.mixer.Wqkv.weight"] == (3 * 1792, 1792)
    assert shapes["transformer.layers.3.mlp.fc1.weight"] == (2 * 3584, 1792)
    assert model.transformer.layers[2].mixer.rotary_dim == 112
    params = sum(p.numel() for n, p in model.named_parameters() if n != "lm_head.weight")
    assert 1.2e9 < params < 1.5e9


def test_attention_1b_config_rotary_35_and_mlp_width():
    config = jrt_config_from_hazy(
        gpt2_dump(
            vocab_size=50257,
            n_embd=1680,
            n_layer=36,
            n_head=24,
            pad_vocab_size_multiple=16,
            rotary_emb_fraction=0.5,
        )
    )
    assert config.layer_mixers == ["attention"] * 36
    assert config.intermediate_size == 4608  # int(8 * 1680 / 3) = 4480 -> 4608 (multiple_of 256)
    with torch.device("meta"):
        model = JRTForCausalLM(config)
    assert model.transformer.layers[0].mixer.rotary_dim == 35


def test_state_bytes_recurrent_vs_kv_cache():
    jrt = _jrt_1b_config()
    small, large = hybrid_state_bytes(jrt, 500, 2), hybrid_state_bytes(jrt, 4000, 2)
    assert small == large  # window of 128 tokens, fixed sums: no growth past the window
    per_linear = 16 * 273 * (112 + 1)
    expected = 7 * per_linear + 22 * (2 * 1792) * 2 + 7 * 2 * 1792 * 128
    assert large == expected * 2
    attn = gpt2_dump(vocab_size=50257, n_embd=1680, n_layer=36, n_head=24, rotary_emb_fraction=0.5)
    assert hybrid_state_bytes(attn, 4000, 2) == 36 * 2 * 1680 * 4000 * 2
    assert hybrid_state_bytes(attn, 4000, 2) > 10 * large
    assert math.isclose(hybrid_state_bytes(attn, 1000, 2) * 4, hybrid_state_bytes(attn, 4000, 2))


# --------------------------------------------------------------------------------------------
# mode="reference": the published harness's generation


def _harness_by_recompute(model, tokenizer, prompt_batch, max_new_tokens, enc_length):
    """The harness rules applied by hand, decoding by a full forward per token (no cache)."""
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompt_batch]
    width = max(map(len, rows))
    ids = torch.tensor([[220] * (width - len(r)) + r for r in rows])
    mask = None
    if width < enc_length:
        ids = torch.cat([torch.full((len(rows), enc_length - width), 220), ids], 1)
        mask = torch.ones_like(ids, dtype=torch.bool)
        mask[:, : enc_length - width] = False
    model.set_inference_mode("reference")
    prompt_len = ids.shape[1]
    for _ in range(max_new_tokens):
        full_mask = (
            None
            if mask is None
            else torch.cat([mask, torch.ones(len(rows), ids.shape[1] - prompt_len, dtype=torch.bool)], 1)
        )
        # The harness mask only reaches prefix linear attention at prefill (l == enc_length).
        logits = model(ids, harness_pad_mask=full_mask if ids.shape[1] == prompt_len else None).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], 1)
    model.set_inference_mode("default")
    return [tokenizer.decode(r[prompt_len:].tolist()).split("\n")[0] for r in ids]


def test_harness_generate_pads_jrt_prompts_to_enc_length(tmp_path):
    from jrt_prompt.generation.harness import harness_generate

    path, _ = hybrid_lookalike(tmp_path / "jrt", "jrt")
    loaded = load_model(path, device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    prompts = ["ab", "hello"]  # both shorter than enc_length 8: padded to 8 with id 220
    got = harness_generate(
        model, tok, prompts, batch_size=2, max_new_tokens=5, enc_length=8, bf16_autocast=False
    )
    # Prefill sees the added padding with its keys zeroed; decoding runs from the bf16-rounded state.
    expected = _harness_by_recompute(model, tok, ["hello", "ab"], 5, 8)
    assert got == [expected[1], expected[0]]
    assert model.config.inference_mode == "default"


class _RecordingTokenizer:
    """The checkpoint's tokenizer, remembering the token lists it decodes."""

    def __init__(self, tokenizer):
        self.tokenizer, self.decoded = tokenizer, []

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def decode(self, ids, **kwargs):
        self.decoded.append((list(ids), kwargs))
        return self.tokenizer.decode(ids, **kwargs)


def test_harness_generate_always_decodes_max_new_tokens_and_cuts_at_newline(tmp_path):
    from jrt_prompt.generation.harness import harness_generate

    path, _ = hybrid_lookalike(tmp_path / "based", "based")
    loaded = load_model(path, device="cpu")
    tok = _RecordingTokenizer(loaded.tokenizer)
    answers = harness_generate(loaded.model, tok, ["x y z", "q"], batch_size=2, max_new_tokens=12, until="")
    assert [len(ids) for ids, _ in tok.decoded] == [12, 12]
    assert all(kwargs == {"skip_special_tokens": False} for _, kwargs in tok.decoded)
    cut = harness_generate(loaded.model, tok, ["x y z", "q"], batch_size=2, max_new_tokens=12)
    assert [a.split("\n")[0] for a in answers] == cut


def test_harness_generate_for_mamba_ignores_eos(tmp_path):
    from jrt_prompt.generation.harness import harness_generate

    path, _ = mamba_lookalike(tmp_path / "mamba")
    loaded = load_model(path, device="cpu")
    loaded.model.generation_config.eos_token_id = 256
    tok = _RecordingTokenizer(loaded.tokenizer)
    harness_generate(loaded.model, tok, ["abc", "de"], batch_size=2, max_new_tokens=7, until="")
    assert [len(ids) for ids, _ in tok.decoded] == [7, 7]
    assert loaded.model.generation_config.eos_token_id == 256
