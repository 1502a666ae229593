"""`jrt bench prefill|decode|model|decode-model|eval-throughput|reuse`: kernel and model benchmarks on a CUDA GPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._common import console, reports_errors


def _ints(text: str, option: str) -> list[int]:
    from jrt_prompt.errors import JRTError

    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise JRTError(f"{option} takes comma-separated integers, e.g. 2048,8192; got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise JRTError(f"{option} needs at least one positive integer; got {text!r}")
    return values


def _names(text: str) -> list[str]:
    """The non-empty names of a comma-separated option."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _write_json(result: dict, path: Path | None) -> None:
    if path is not None:
        path.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {path}")


@reports_errors
def prefill_command(
    lengths: Annotated[
        str, typer.Option(help="Prompt lengths N, comma-separated.")
    ] = "2048,8192,32768,65536",
    batch: Annotated[int, typer.Option(help="Batch size.")] = 16,
    heads: Annotated[int, typer.Option(help="Heads.")] = 16,
    head_dim: Annotated[
        int, typer.Option(help="Head dim (softmax attention; value dim of linear attention).")
    ] = 64,
    feature_dim: Annotated[int, typer.Option(help="Linear-attention feature dim f.")] = 16,
    dtype: Annotated[str, typer.Option(help="bfloat16 or float16.")] = "bfloat16",
    enc_fraction: Annotated[
        float, typer.Option(help="Share of the prompt that PLA reads as its encoder.")
    ] = 1.0,
    methods: Annotated[
        str, typer.Option(help="Comma-separated: fa2,cudnn,fla_fused_chunk_based,based,based_2n,pla.")
    ] = "fa2,cudnn,fla_fused_chunk_based,based,based_2n,pla",
    reps: Annotated[int, typer.Option(help="Timed repeats per method (median reported).")] = 10,
    tune: Annotated[
        bool, typer.Option("--tune", metavar="", help="First pick the fastest kernel launch configuration.")
    ] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Draw ms against N (PNG) here.")] = None,
) -> None:
    """Prefill time of FA2, cuDNN, fla and this project's Based (N and 2N) and PLA kernels."""
    from jrt_prompt.bench import format_prefill_table, plot_prefill, run_prefill_bench
    from jrt_prompt.bench.prefill import tune_prefill

    config = encoder_config = tuning = None
    if tune:
        config, encoder_config, tuning = tune_prefill(
            32768, batch=batch, heads=heads, head_dim=head_dim, dtype=dtype
        )
        console.print(f"fastest kernel config: {config}; encoder pass: {encoder_config}")
    result = run_prefill_bench(
        _ints(lengths, "--lengths"),
        batch=batch,
        heads=heads,
        head_dim=head_dim,
        feature_dim=feature_dim,
        dtype=dtype,
        enc_fraction=enc_fraction,
        methods=_names(methods),
        reps=reps,
        config=config,
        encoder_config=encoder_config,
    )
    if tuning is not None:
        result["tuning"] = tuning
    console.print(format_prefill_table(result))
    _write_json(result, json_out)
    if plot is not None:
        console.print(f"wrote {plot_prefill(result, plot)}")


@reports_errors
def decode_command(
    batches: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,4,16,64",
    cache_len: Annotated[int, typer.Option(help="KV-cache length of the SDPA baseline.")] = 32768,
    heads: Annotated[int, typer.Option(help="Heads.")] = 16,
    head_dim: Annotated[int, typer.Option(help="Head dim.")] = 64,
    dtype: Annotated[str, typer.Option(help="bfloat16 or float16.")] = "bfloat16",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
) -> None:
    """Tokens/s of the fused recurrent step against SDPA decoding over a KV cache."""
    from jrt_prompt.bench import format_decode_table, run_decode_bench

    result = run_decode_bench(
        _ints(batches, "--batches"), cache_len=cache_len, heads=heads, head_dim=head_dim, dtype=dtype
    )
    console.print(format_decode_table(result))
    _write_json(result, json_out)


@reports_errors
def model_command(
    lengths: Annotated[str, typer.Option(help="Prompt lengths N, comma-separated.")] = "2048,8192,32768",
    models: Annotated[
        str,
        typer.Option(
            help="Comma-separated: mamba-1.4b,mamba2-1.3b,jrt-rnn-1.3b,based-1.3b,gla-1.3b,transformer-1.3b."
        ),
    ] = "mamba-1.4b,mamba2-1.3b,jrt-rnn-1.3b,based-1.3b,gla-1.3b,transformer-1.3b",
    batches: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,8",
    dtype: Annotated[str, typer.Option(help="bfloat16 or float16.")] = "bfloat16",
    reps: Annotated[int, typer.Option(help="Timed repeats per row (median reported).")] = 3,
    time_budget: Annotated[
        float | None, typer.Option(help="Seconds after which the remaining rows are skipped (recorded).")
    ] = None,
    before_cap: Annotated[
        float, typer.Option(help="Stop timing transformers' fallback once one prompt took this many seconds.")
    ] = 30.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Draw prefill ms against tokens read (PNG) here.")] = None,
) -> None:
    """Whole-model prefill of real-size models with random weights: this project's path, transformers'
    fallback, the Transformer on N, and the matmul floor (JRT-Prompt models are timed on N and 2N)."""
    from jrt_prompt.bench.model import format_model_table, plot_model_bench, run_model_bench

    result = run_model_bench(
        _ints(lengths, "--lengths"),
        models=_names(models),
        batches=_ints(batches, "--batches"),
        dtype=dtype,
        reps=reps,
        before_cap_s=before_cap,
        time_budget_s=time_budget,
    )
    console.print(format_model_table(result))
    _write_json(result, json_out)
    if plot is not None:
        console.print(f"wrote {plot_model_bench(result, plot)}")


@reports_errors
def decode_model_command(
    models: Annotated[
        str, typer.Option(help="Comma-separated benchmark models (jrt_prompt.bench.model).")
    ] = "mamba-1.4b,mamba2-1.3b,jrt-rnn-1.3b,based-1.3b,gla-1.3b,transformer-1.3b",
    batches: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,8,64",
    prompt_tokens: Annotated[int, typer.Option(help="Prompt tokens before decoding.")] = 512,
    decode_tokens: Annotated[int, typer.Option(help="Tokens generated to time decoding.")] = 64,
    dtype: Annotated[str, typer.Option(help="bfloat16 or float16.")] = "bfloat16",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
) -> None:
    """Decode tokens/s before (transformers' generate) and after (the decode engine), % of the bandwidth limit.

    Mamba and Mamba-2 rows also time the engine replaying the model's own one-token forward, beside
    the default written-out step.
    """
    from jrt_prompt.bench.decode_model import format_decode_model_table, run_decode_model_bench

    result = run_decode_model_bench(
        _names(models),
        batches=_ints(batches, "--batches"),
        prompt_tokens=prompt_tokens,
        decode_tokens=decode_tokens,
        dtype=dtype,
    )
    console.print(format_decode_model_table(result))
    _write_json(result, json_out)


@reports_errors
def eval_throughput_command(
    models: Annotated[str, typer.Option(help="Comma-separated benchmark models.")] = "mamba-1.4b",
    prompts: Annotated[
        int, typer.Option(help="Prompts per form (the paper's Table 1: 12,000; each also in the twice form).")
    ] = 12000,
    batch_size: Annotated[
        int | None, typer.Option(help="Batch size (default: from free GPU memory).")
    ] = None,
    dtype: Annotated[str, typer.Option(help="bfloat16 or float16.")] = "bfloat16",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
) -> None:
    """Wall time and prompts/s of the Table-1-shaped protocol (500-2,000-token prompts, 48 greedy tokens).

    Two passes per model: the first pays the one-off costs, the second is timed and projected."""
    from jrt_prompt.bench.eval_throughput import format_eval_throughput_table, run_eval_throughput

    result = run_eval_throughput(
        _names(models),
        prompts=prompts,
        batch_size=batch_size,
        dtype=dtype,
    )
    console.print(format_eval_throughput_table(result))
    _write_json(result, json_out)


@reports_errors
def reuse_command(
    models: Annotated[
        str, typer.Option(help="Comma-separated benchmark models (jrt_prompt.bench.model).")
    ] = "mamba-1.4b,mamba2-1.3b,jrt-rnn-1.3b,based-1.3b,transformer-1.3b",
    questions: Annotated[str, typer.Option(help="Questions per document, comma-separated.")] = "1,4,16,64",
    doc_tokens: Annotated[int, typer.Option(help="Document tokens (one read of it).")] = 2048,
    question_tokens: Annotated[int, typer.Option(help="Tokens per question.")] = 16,
    answer_tokens: Annotated[int, typer.Option(help="Greedy tokens per answer.")] = 16,
    paths: Annotated[
        str, typer.Option(help="Comma-separated: scratch, scratch-context-first, reuse.")
    ] = "scratch,scratch-context-first,reuse",
    dtype: Annotated[str, typer.Option(help="bfloat16 or float16.")] = "bfloat16",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
) -> None:
    """Questions/s answering Q questions per document from scratch (JRT-Prompt) and from a state read once, and bytes per cached document."""
    from jrt_prompt.bench.reuse import format_reuse_table, run_reuse_bench

    result = run_reuse_bench(
        _names(models),
        questions=_ints(questions, "--questions"),
        doc_tokens=doc_tokens,
        question_tokens=question_tokens,
        answer_tokens=answer_tokens,
        paths=_names(paths),
        dtype=dtype,
    )
    console.print(format_reuse_table(result))
    _write_json(result, json_out)
