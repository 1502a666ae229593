"""Whole-model throughput: what JRT costs end to end, on real-size architectures with random weights.

Models are built from their configurations (no download): JRT-RNN and Based (this project's
modeling code, the layer pattern and sizes of the released 1.3B checkpoints), Mamba-2 and a
Llama-style Transformer (transformers' classes). JRT-Prompt models (Based, Mamba-2) read the
prompt twice (2N tokens); JRT-RNN and the Transformer read N tokens.

Prefill: one forward over the prompt that builds the cache, logits for the last position only.
Decode: greedy generation (``model.generate``), tokens/s from the difference between generating
``decode_tokens + 1`` and 1 token(s), so the prefill cancels out.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from jrt_prompt.errors import JRTError

from .prefill import _dtype
from .timing import environment

MODELS = ("jrt-rnn-1.3b", "based-1.3b", "mamba2-1.3b", "transformer-1.3b")
READS_TWICE = {"based-1.3b": True, "mamba2-1.3b": True, "jrt-rnn-1.3b": False, "transformer-1.3b": False}


def build_config(name: str, *, tiny: bool = False):
    """Configuration of a benchmark model; ``tiny`` shrinks every size (for tests on CPU)."""
    from transformers import LlamaConfig, Mamba2Config

    from jrt_prompt.models.modeling_jrt import JRTConfig, hazy_layer_schedule

    if name in ("jrt-rnn-1.3b", "based-1.3b"):
        mixer = "prefix_linear" if name.startswith("jrt") else "based"
        layers, d = (5, 64) if tiny else (36, 1792)
        return JRTConfig(
            vocab_size=50257,
            hidden_size=d,
            num_hidden_layers=layers,
            layer_mixers=hazy_layer_schedule(layers, mixer),
            intermediate_size=2 * d,
            num_heads=4 if tiny else 16,
            attention_heads=4 if tiny else 16,
            feature_dim=16,
            enc_length=1024,
        )
    if name == "mamba2-1.3b":
        d = 64 if tiny else 2048
        return Mamba2Config(
            vocab_size=50288,
            hidden_size=d,
            num_hidden_layers=2 if tiny else 48,
            state_size=16 if tiny else 128,
            expand=2,
            head_dim=16 if tiny else 64,
            num_heads=(2 * d) // (16 if tiny else 64),
            n_groups=1,
            chunk_size=256,
        )
    if name == "transformer-1.3b":
        d = 64 if tiny else 2048
        return LlamaConfig(
            vocab_size=50304,
            hidden_size=d,
            intermediate_size=4 * d if tiny else 5632,
            num_hidden_layers=2 if tiny else 24,
            num_attention_heads=4 if tiny else 16,
            num_key_value_heads=4 if tiny else 16,
            max_position_embeddings=262144,
            attn_implementation="sdpa",
        )
    raise JRTError(f"unknown benchmark model {name!r}; choose from {', '.join(MODELS)}")


def build_model(name: str, *, device, dtype, tiny: bool = False):
    from transformers import LlamaForCausalLM, Mamba2ForCausalLM

    from jrt_prompt.models.modeling_jrt import JRTForCausalLM

    config = build_config(name, tiny=tiny)
    cls = {"mamba2-1.3b": Mamba2ForCausalLM, "transformer-1.3b": LlamaForCausalLM}.get(name, JRTForCausalLM)
    with torch.device(device):
        model = cls(config)
    return model.to(dtype=dtype).eval()


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _seconds(fn, device, reps: int) -> float:
    times = []
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_model_bench(
    lengths: Sequence[int] = (2048, 8192, 32768),
    *,
    models: Sequence[str] = MODELS,
    batch: int = 1,
    decode_tokens: int = 32,
    dtype: str = "bfloat16",
    reps: int = 2,
    max_prefill_s: float = 20.0,
    device: str | None = None,
    tiny: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Prefill ms and decode tokens/s per model and prompt length N (JRT-Prompt models read 2N).

    A model whose prefill took longer than ``max_prefill_s`` skips the longer lengths (e.g. the
    Mamba-2 PyTorch fallback when mamba-ssm is not installed).
    """
    if device is None:
        if not torch.cuda.is_available():
            raise JRTError("jrt bench model needs a CUDA GPU; none is visible (check CUDA_VISIBLE_DEVICES)")
        device = "cuda"
    torch_dtype = _dtype(dtype) if torch.device(device).type == "cuda" else torch.float32
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise JRTError(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    rows = []
    for name in models:
        model = build_model(name, device=device, dtype=torch_dtype, tiny=tiny)
        params = sum(p.numel() for p in model.parameters())
        vocab = model.config.vocab_size
        too_slow = False
        for n in lengths:
            tokens = 2 * n if READS_TWICE[name] else n
            row = {"model": name, "params": params, "n": n, "tokens_read": tokens, "batch": batch}
            if too_slow:
                rows.append(
                    {**row, "note": f"skipped: prefill of a shorter prompt took > {max_prefill_s:.0f} s"}
                )
                continue
            gen = torch.Generator(device="cpu").manual_seed(n)
            ids = torch.randint(0, vocab, (batch, tokens), generator=gen).to(device)
            try:
                with torch.inference_mode():
                    if n == lengths[0]:  # warm-up: kernel compilation and allocator growth
                        model(input_ids=ids, use_cache=True, logits_to_keep=1)
                    prefill = _seconds(
                        lambda m=model, x=ids: m(input_ids=x, use_cache=True, logits_to_keep=1), device, reps
                    )

                    def generate(new_tokens, ids=ids, model=model):
                        return model.generate(
                            ids,
                            attention_mask=torch.ones_like(ids),
                            max_new_tokens=new_tokens,
                            min_new_tokens=new_tokens,
                            do_sample=False,
                            pad_token_id=0,
                        )

                    if n == lengths[0]:
                        generate(2)
                    one = _seconds(lambda: generate(1), device, 1)
                    many = _seconds(lambda: generate(decode_tokens + 1), device, 1)
                per_token = max(many - one, 1e-9) / decode_tokens
                row.update(
                    prefill_ms=prefill * 1e3,
                    prefill_tokens_per_s=batch * tokens / prefill,
                    decode_ms_per_token=per_token * 1e3,
                    decode_tokens_per_s=batch / per_token,
                )
                too_slow = prefill > max_prefill_s
            except torch.cuda.OutOfMemoryError:
                row["note"] = "out of GPU memory"
            except Exception as exc:  # recorded per row: one family failing must not hide the others
                row["note"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            log(
                f"{name:<18} N={n:>6} read {tokens:>6}: "
                + (
                    f"prefill {row['prefill_ms']:9.1f} ms  decode {row['decode_tokens_per_s']:8.1f} tok/s"
                    if "prefill_ms" in row
                    else row["note"]
                )
            )
            rows.append(row)
            ids = None
            gc.collect()
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
        model = None
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return {
        "env": environment(),
        "shape": {"batch": batch, "dtype": dtype, "decode_tokens": decode_tokens},
        "rows": rows,
    }


def format_model_table(result: dict) -> str:
    lines = [
        "| model | N | tokens read | prefill ms | prefill tok/s | decode tok/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "prefill_ms" in r:
            lines.append(
                f"| {r['model']} | {r['n']:,} | {r['tokens_read']:,} | {r['prefill_ms']:.1f} | "
                f"{r['prefill_tokens_per_s']:,.0f} | {r['decode_tokens_per_s']:.1f} |"
            )
        else:
            lines.append(
                f"| {r['model']} | {r['n']:,} | {r['tokens_read']:,} | — | — | {r.get('note', '')} |"
            )
    return "\n".join(lines)
