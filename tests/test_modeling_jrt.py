"""JRTForCausalLM: math against a naive implementation written here from the published formulas,
prefill/decode equivalence, left padding, the recurrent state, transformers integration."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from jrt_prompt.kernels import taylor_feature_map
from jrt_prompt.models.modeling_jrt import MIXER_KINDS, JRTCache, JRTConfig, JRTForCausalLM

ALL_MIXERS = ["base_conv", "prefix_linear", "sliding_window", "based", "attention", "prefix_linear"]


def tiny_config(layer_mixers, **overrides) -> JRTConfig:
    values = dict(
        vocab_size=61,
        pad_vocab_size_multiple=8,
        hidden_size=32,
        layer_mixers=list(layer_mixers),
        intermediate_size=48,
        num_heads=4,
        feature_dim=4,
        enc_length=5,
        attention_heads=4,
        sliding_window=3,
        rotary_emb_fraction=1.0,
    )
    values.update(overrides)
    return JRTConfig(**values)


def tiny_model(layer_mixers, seed=0, **overrides) -> JRTForCausalLM:
    torch.manual_seed(seed)
    model = JRTForCausalLM(tiny_config(layer_mixers, **overrides)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        # Larger than the default init so that logits differ clearly between tokens.
        for name, p in model.named_parameters():
            if p.dim() >= 2 and name != "lm_head.weight":
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / p.shape[-1] ** 0.5))
            elif p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
    return model


# --------------------------------------------------------------------------------------------
# A naive forward written directly from the formulas (nothing shared with the model's code).


def taylor_scores(q, k):
    """1 + s + s²/2 with s = q·k/√f: the kernel of Based / prefix linear attention."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return 1 + s + s * s / 2


def naive_based(q, k, v, eps=1e-12):
    """q, k [h, l, f], v [h, l, dv] -> causal normalised Taylor attention, quadratic."""
    a = taylor_scores(q, k) * torch.ones(q.shape[1], q.shape[1]).tril()
    return (a @ v) / (a.sum(-1, keepdim=True) + eps)


def naive_pla(q, k, v, k_enc, v_enc, enc, eps=1e-12):
    """Causal term plus the non-causal encoder term over the first ``enc`` positions, one denominator."""
    a1 = taylor_scores(q, k) * torch.ones(q.shape[1], q.shape[1]).tril()
    a2 = taylor_scores(q, k_enc[:, :enc])
    num = a1 @ v + a2 @ v_enc[:, :enc]
    return num / (a1.sum(-1, keepdim=True) + a2.sum(-1, keepdim=True) + eps)


def naive_rotary(x, rotary_dim, base=10000.0):
    """x [h, l, hd]; NeoX halves, position = index; odd rotary_dim rotates ceil(r/2) pairs."""
    n = (rotary_dim + 1) // 2
    inv = base ** (-torch.arange(0, rotary_dim, 2).double() / rotary_dim)
    ang = torch.arange(x.shape[1]).double()[:, None] * inv[None]
    cos, sin = ang.cos().float(), ang.sin().float()
    out = x.clone()
    x1, x2 = x[..., :n], x[..., n : 2 * n]
    out[..., :n] = x1 * cos - x2 * sin
    out[..., n : 2 * n] = x2 * cos + x1 * sin
    return out


def naive_forward(model: JRTForCausalLM, ids: torch.Tensor, enc_override: int | None = None) -> torch.Tensor:
    """Logits [l, V] for one sequence from the raw state dict, following the published math."""
    cfg = model.config
    sd = {k: v.float() for k, v in model.state_dict().items()}
    d = cfg.hidden_size
    l = ids.shape[0]

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.rms_norm_eps) * w

    def heads(x, n):  # [l, n*dh] -> [n, l, dh]
        return x.view(l, n, -1).transpose(0, 1)

    residual = sd["transformer.embeddings.word_embeddings.weight"][ids]
    for i, kind in enumerate(cfg.layer_mixers):
        p = f"transformer.layers.{i}."
        x = rms(residual, sd[p + "norm1.weight"])
        m = p + "mixer."
        if kind == "base_conv":
            u = x @ sd[m + "in_proj.weight"].T + sd[m + "in_proj.bias"]
            u1, u2 = u.chunk(2, dim=-1)
            w = sd[m + "conv.conv.weight"][:, 0, :]  # [c, k]
            k = w.shape[-1]
            c = torch.zeros_like(u1)
            for t in range(l):
                for j in range(k):  # tap j multiplies the input k-1-j steps back
                    src = t - (k - 1 - j)
                    if src >= 0:
                        c[t] += w[:, j] * u1[src]
            y = (F.silu(c) * u2) @ sd[m + "out_proj.weight"].T + sd[m + "out_proj.bias"]
        elif kind in ("based", "prefix_linear"):
            h = cfg.num_heads
            q = heads(x @ sd[m + "proj_q.weight"].T, h)
            kk = heads(x @ sd[m + "proj_k.weight"].T, h)
            v = heads(x @ sd[m + "proj_v.weight"].T, h)
            if kind == "based":
                o = naive_based(q, kk, v)
            else:
                enc = min(cfg.enc_length, l) if enc_override is None else enc_override
                ke = heads(x @ sd[m + "proj_k_enc.weight"].T, h)
                ve = heads(x @ sd[m + "proj_v_enc.weight"].T, h)
                o = naive_pla(q, kk, v, ke, ve, enc)
            y = o.transpose(0, 1).reshape(l, d) @ sd[m + "out_proj.weight"].T
        else:
            h = cfg.attention_heads
            hd = d // h
            qkv = x @ sd[m + "Wqkv.weight"].T
            q, kk, v = (heads(t, h) for t in qkv.split(d, dim=-1))
            r = int(cfg.rotary_emb_fraction * hd)
            q, kk = naive_rotary(q, r), naive_rotary(kk, r)
            scores = q @ kk.transpose(-1, -2) / math.sqrt(hd)
            i_idx, j_idx = torch.arange(l)[:, None], torch.arange(l)[None]
            allowed = j_idx <= i_idx
            if kind == "sliding_window":
                allowed = allowed & (i_idx - j_idx <= cfg.sliding_window)
            o = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
            y = o.transpose(0, 1).reshape(l, d) @ sd[m + "out_proj.weight"].T
        residual = residual + y
        z = rms(residual, sd[p + "norm2.weight"]) @ sd[p + "mlp.fc1.weight"].T
        value, gate = z.chunk(2, dim=-1)
        residual = residual + (value * F.silu(gate)) @ sd[p + "mlp.fc2.weight"].T
    out = rms(residual, sd["transformer.ln_f.weight"])
    return out @ sd["transformer.embeddings.word_embeddings.weight"].T


# --------------------------------------------------------------------------------------------


def test_taylor_feature_map_identity():
    torch.manual_seed(0)
    for f in (4, 16):
        q, k = torch.randn(7, f), torch.randn(7, f)
        s = (q * k).sum(-1) / math.sqrt(f)
        dot = (taylor_feature_map(q) * taylor_feature_map(k)).sum(-1)
        assert taylor_feature_map(q).shape[-1] == 1 + f + f * f
        torch.testing.assert_close(dot, 1 + s + s * s / 2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", MIXER_KINDS)
def test_each_mixer_matches_naive_quadratic(kind):
    model = tiny_model([kind, kind])
    ids = torch.randint(0, 61, (12,))
    torch.testing.assert_close(model(ids[None]).logits[0], naive_forward(model, ids), atol=1e-4, rtol=1e-4)


def test_whole_hybrid_matches_naive():
    model = tiny_model(ALL_MIXERS)
    ids = torch.randint(0, 61, (13,))
    torch.testing.assert_close(model(ids[None]).logits[0], naive_forward(model, ids), atol=1e-4, rtol=1e-4)


def test_attention_baseline_partial_rotary_with_odd_dim_matches_naive():
    # attn-1b: head dim 70, rotary_emb_fraction 0.5 -> rotary_emb_dim 35 -> 36 rotated channels.
    model = tiny_model(["attention"] * 2, hidden_size=28, attention_heads=2, rotary_emb_fraction=0.5)
    ids = torch.randint(0, 61, (9,))
    torch.testing.assert_close(model(ids[None]).logits[0], naive_forward(model, ids), atol=1e-4, rtol=1e-4)


def _prefill_then_decode(model, ids, prefix, attention_mask=None):
    out = model(
        ids[:, :prefix],
        attention_mask=None if attention_mask is None else attention_mask[:, :prefix],
        use_cache=True,
    )
    cache = out.past_key_values
    logits = [out.logits]
    for t in range(prefix, ids.shape[1]):
        mask = None if attention_mask is None else attention_mask[:, : t + 1]
        step = model(ids[:, t : t + 1], attention_mask=mask, past_key_values=cache, use_cache=True)
        logits.append(step.logits)
    return torch.cat(logits, dim=1), cache


@pytest.mark.parametrize("kind", MIXER_KINDS)
@pytest.mark.parametrize("prefix", [1, 6, 9])
def test_prefill_decode_equals_parallel_per_mixer(kind, prefix):
    model = tiny_model([kind])
    ids = torch.randint(0, 61, (2, 14))
    if kind == "prefix_linear" and prefix < model.config.enc_length:
        # The encoder region is fixed at prefill: first min(enc_length, prefill) tokens.
        expected = torch.stack([naive_forward(model, row, enc_override=prefix) for row in ids])
    else:
        expected = model(ids).logits
    got, _ = _prefill_then_decode(model, ids, prefix)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("prefix", [5, 8])
def test_prefill_decode_equals_parallel_whole_model(prefix):
    model = tiny_model(ALL_MIXERS)
    ids = torch.randint(0, 61, (2, 15))
    got, _ = _prefill_then_decode(model, ids, prefix)
    torch.testing.assert_close(got, model(ids).logits, atol=1e-4, rtol=1e-4)


def test_multi_token_continuation_after_prefill():
    model = tiny_model(ALL_MIXERS)
    ids = torch.randint(0, 61, (2, 14))
    out = model(ids[:, :7], use_cache=True)
    more = model(ids[:, 7:], past_key_values=out.past_key_values, use_cache=True)
    torch.testing.assert_close(more.logits, model(ids).logits[:, 7:], atol=1e-4, rtol=1e-4)


def test_decode_state_is_constant_size_for_recurrent_mixers():
    model = tiny_model(["base_conv", "prefix_linear", "sliding_window", "based"])
    ids = torch.randint(0, 61, (1, 30))
    out = model(ids[:, :10], use_cache=True)
    cache: JRTCache = out.past_key_values
    sizes = []
    for t in range(10, 30):
        model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
        sizes.append(cache.state_bytes())
    assert len(set(sizes)) == 1
    window = cache.layers[2]
    # the ring: the window's keys and the slot the next token writes before it attends
    assert window["k"].shape[1] == model.config.sliding_window + 1
    kv = cache.layers[1]
    assert kv.kv.dtype == torch.float32 and kv.kv.shape == (1, 4, 1 + 4 + 16, 8)
    assert cache.layers[0].shape == (1, 2 * 32, 2)


def test_left_padded_batch_equals_each_prompt_alone():
    model = tiny_model(ALL_MIXERS)
    lengths = [11, 4, 7]
    rows = [torch.randint(0, 61, (n,)) for n in lengths]
    width, pad_id = max(lengths), 3
    ids = torch.full((3, width), pad_id)
    mask = torch.zeros(3, width, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :] = row
        mask[r, width - len(row) :] = 1
    extra = torch.randint(0, 61, (3, 5))
    full_ids = torch.cat([ids, extra], 1)
    full_mask = torch.cat([mask, torch.ones(3, 5, dtype=torch.long)], 1)
    batched, _ = _prefill_then_decode(model, full_ids, width, attention_mask=full_mask)
    for r, row in enumerate(rows):
        alone_ids = torch.cat([row, extra[r]])[None]
        alone, _ = _prefill_then_decode(model, alone_ids, len(row))
        torch.testing.assert_close(batched[r, width - len(row) :], alone[0], atol=1e-4, rtol=1e-4)


def test_generate_left_padded_batch_equals_alone(byte_tokenizer):
    from jrt_prompt.generation import generate

    model = tiny_model(ALL_MIXERS, vocab_size=258, enc_length=8)
    prompts = ["the cat sat on", "a", "hello there, world of"]
    batched = generate(model, byte_tokenizer, prompts, max_new_tokens=6, stop=(), batch_size=3)
    for prompt, answer in zip(prompts, batched, strict=True):
        alone = generate(model, byte_tokenizer, [prompt], max_new_tokens=6, stop=(), batch_size=1)[0]
        assert answer.text == alone.text
        assert answer.answer_tokens == 6


def test_save_pretrained_auto_class_and_generate(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = tiny_model(ALL_MIXERS)
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "jrt_hybrid"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is JRTForCausalLM
    assert loaded.config.layer_mixers == ALL_MIXERS
    ids = torch.randint(0, 61, (2, 9))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.embeddings.word_embeddings.weight.data_ptr()
    out = loaded.generate(ids, max_new_tokens=5, do_sample=False)
    expected = ids
    for _ in range(5):
        nxt = loaded(expected).logits[:, -1].argmax(-1, keepdim=True)
        expected = torch.cat([expected, nxt], 1)
    assert torch.equal(out, expected)


def test_training_forward_returns_loss_and_gradients():
    model = tiny_model(ALL_MIXERS).train()
    ids = torch.randint(0, 61, (2, 10))
    labels = ids.clone()
    labels[:, :3] = -100
    out = model(ids, labels=labels)
    manual = F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, manual)
    out.loss.backward()
    without_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without_grad == []


def test_padded_vocab_and_any_vocab_size():
    config = JRTConfig(vocab_size=50257, hidden_size=16, layer_mixers=["based"], num_heads=2, feature_dim=4)
    assert config.padded_vocab_size == 50264
    assert (
        JRTConfig(
            vocab_size=13, pad_vocab_size_multiple=1, hidden_size=8, layer_mixers=["base_conv"]
        ).padded_vocab_size
        == 13
    )


def test_bad_schedule_is_a_one_line_error():
    from jrt_prompt.errors import JRTError

    with pytest.raises(JRTError, match="layer_mixers contains"):
        JRTConfig(layer_mixers=["mamba"], hidden_size=16)
    with pytest.raises(JRTError, match="num_hidden_layers"):
        JRTConfig(layer_mixers=["based"], num_hidden_layers=2, hidden_size=16)


# --------------------------------------------------------------------------------------------
# Reference mode: the published harness's numerics


def test_reference_mode_based_decode_adds_kv_twice():
    model = tiny_model(["based"])
    ids = torch.randint(0, 61, (1, 9))
    prefix = 6
    model.set_inference_mode("reference")
    got, _ = _prefill_then_decode(model, ids, prefix)
    model.set_inference_mode("default")

    # Naive: decoded tokens count double in the numerator's kv sum, once in the denominator.
    sd = model.state_dict()
    x = model.transformer.layers[0].norm1(model.transformer.embeddings(ids[0]))
    h = model.config.num_heads
    q = (x @ sd["transformer.layers.0.mixer.proj_q.weight"].T).view(9, h, -1).transpose(0, 1)
    k = (x @ sd["transformer.layers.0.mixer.proj_k.weight"].T).view(9, h, -1).transpose(0, 1)
    v = (x @ sd["transformer.layers.0.mixer.proj_v.weight"].T).view(9, h, -1).transpose(0, 1)
    a = taylor_scores(q, k) * torch.ones(9, 9).tril()
    weight = torch.ones(9, 9)
    weight[:, prefix:] = 2.0  # keys of decoded tokens
    num = (a * weight) @ v
    o = num / a.sum(-1, keepdim=True)
    y = o.transpose(0, 1).reshape(9, -1) @ sd["transformer.layers.0.mixer.out_proj.weight"].T
    # Compare the mixer outputs through the logits of the decoded positions only.
    block = model.transformer.layers[0]
    residual = model.transformer.embeddings(ids[0]).float() + y
    hidden = block.mlp(block.norm2(residual))
    logits = model.lm_head(model.transformer.ln_f(residual + hidden))
    torch.testing.assert_close(got[0, prefix:], logits[prefix:], atol=2e-2, rtol=2e-2)
    assert not torch.allclose(got[0, prefix:], model(ids).logits[0, prefix:], atol=1e-3)


def test_reference_mode_pla_harness_padding_keeps_constant_feature():
    model = tiny_model(["prefix_linear"], enc_length=8)
    ids = torch.randint(0, 61, (1, 8))
    harness_mask = torch.tensor([[False, False, False, True, True, True, True, True]])
    model.set_inference_mode("reference")
    ref = model(ids, harness_pad_mask=harness_mask).logits
    model.set_inference_mode("default")
    # Same as zeroing the raw keys (and encoder keys) of the padded positions: build that by
    # hand from the naive formula with φ(0)·φ(q) = 1 for those positions.
    sd = model.state_dict()
    x = model.transformer.layers[0].norm1(model.transformer.embeddings(ids[0]))
    h = model.config.num_heads

    def proj(name):
        return (x @ sd[f"transformer.layers.0.mixer.{name}.weight"].T).view(8, h, -1).transpose(0, 1)

    keep = harness_mask[0].float()[None, :, None]
    q, k, v, ke, ve = (
        proj("proj_q"),
        proj("proj_k") * keep,
        proj("proj_v"),
        proj("proj_k_enc") * keep,
        proj("proj_v_enc"),
    )
    o = naive_pla(q, k, v, ke, ve, 8)
    y = o.transpose(0, 1).reshape(8, -1) @ sd["transformer.layers.0.mixer.out_proj.weight"].T
    block = model.transformer.layers[0]
    residual = model.transformer.embeddings(ids[0]).float() + y
    logits = model.lm_head(model.transformer.ln_f(residual + block.mlp(block.norm2(residual))))
    torch.testing.assert_close(ref[0], logits, atol=1e-4, rtol=1e-4)


def test_reference_mode_ignores_batch_padding_mask_and_rounds_states():
    model = tiny_model(["based", "sliding_window"])
    ids = torch.randint(0, 61, (1, 10))
    mask = torch.ones(1, 10, dtype=torch.long)
    mask[0, :4] = 0
    model.set_inference_mode("reference")
    out = model(ids, attention_mask=mask, use_cache=True)
    unmasked = model(ids).logits
    state = out.past_key_values.layers[0]
    model.set_inference_mode("default")
    torch.testing.assert_close(out.logits, unmasked)
    assert torch.equal(state.kv, state.kv.bfloat16().float())
    assert not torch.allclose(model(ids, attention_mask=mask).logits[0, 4:], unmasked[0, 4:])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_path_matches_reference_path_on_gpu(dtype, monkeypatch):
    model = tiny_model(
        ALL_MIXERS, hidden_size=64, num_heads=4, feature_dim=16, enc_length=40, sliding_window=16
    )
    model = model.cuda().to(dtype)
    ids = torch.randint(0, 61, (3, 96), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :20] = 0
    with torch.no_grad():
        monkeypatch.setenv("JRT_KERNELS", "triton")
        fast, fast_cache = _prefill_then_decode(model, ids, 70, attention_mask=mask)
        monkeypatch.setenv("JRT_KERNELS", "reference")
        slow, _ = _prefill_then_decode(model, ids, 70, attention_mask=mask)
    if dtype == torch.float32:
        torch.testing.assert_close(fast, slow, atol=2e-3, rtol=2e-3)
    else:  # bf16 outputs of two accumulation orders: compare the distributions
        assert (fast.float().softmax(-1) - slow.float().softmax(-1)).abs().max() < 5e-2
    assert fast_cache.layers[1].kv.dtype == torch.float32


@pytest.mark.gpu
def test_jrt_360m_shapes_on_gpu_bf16_triton_vs_reference_and_decode(monkeypatch):
    """The released JRT-360M layout (26 layers, d 1024, f 16, window 128, enc 1024), random
    weights, bf16: Triton kernels vs the PyTorch references, prefill+decode vs parallel, a
    left-padded row vs alone, constant decode memory, and the harness generation path."""
    from jrt_prompt.generation.harness import harness_generate
    from jrt_prompt.tokenization import build_byte_tokenizer

    torch.manual_seed(0)
    config = JRTConfig(vocab_size=50257, hidden_size=1024, num_hidden_layers=26, intermediate_size=2048)
    model = JRTForCausalLM(config).cuda().to(torch.bfloat16).eval()
    ids = torch.randint(0, 50257, (2, 1100), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :300] = 0
    with torch.no_grad():
        monkeypatch.setenv("JRT_KERNELS", "triton")
        fast = model(ids, attention_mask=mask).logits
        parallel_1040 = model(ids[:, :1040], attention_mask=mask[:, :1040]).logits
        stepped, cache = _prefill_then_decode(model, ids[:, :1040], 1030, attention_mask=mask[:, :1040])
        sizes = {cache.state_bytes()}
        for t in range(3):
            model(
                ids[:, 1040 + t : 1041 + t],
                attention_mask=mask[:, : 1041 + t],
                past_key_values=cache,
                use_cache=True,
            )
            sizes.add(cache.state_bytes())
        alone = model(ids[1:, 300:]).logits
        monkeypatch.setenv("JRT_KERNELS", "reference")
        slow = model(ids, attention_mask=mask).logits
    assert len(sizes) == 1
    assert cache.layers[1].kv.dtype == torch.float32
    # Same math, different accumulation order in bf16: compare the distributions, not the bits.
    assert (fast.float().softmax(-1) - slow.float().softmax(-1)).abs().max() < 2e-2
    assert (stepped.float().softmax(-1) - parallel_1040.float().softmax(-1)).abs().max() < 2e-2
    assert (alone[0].float().softmax(-1) - fast[1, 300:].float().softmax(-1)).abs().max() < 2e-2
    monkeypatch.delenv("JRT_KERNELS")
    tok = build_byte_tokenizer()
    out = harness_generate(model, tok, ["a" * 300, "b" * 1200, "c" * 50], batch_size=2, max_new_tokens=8)
    assert len(out) == 3 and model.config.inference_mode == "default"
