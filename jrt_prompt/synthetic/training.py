"""Training and evaluation of small recall models with the multi-query loss.

Every answer of a row is teacher-forced and scored (MQAR: all queried values; set disjointness:
every membership mark; kv-docs: every answer of the row). A loss on a single answer per row was
measured to learn nothing in thousands of steps for linear attention; the dense loss learns.

Training mixes the prompt forms. The learning rate follows a one-cycle schedule over the run's
progress, where progress is the larger of steps done / ``max_steps`` and time spent / ``time_budget_s``:
a run on a busy or slower device still anneals and ends inside its time budget.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import JRTError
from .batch import IGNORE, TokenBatch
from .forms import ALL_FORMS, parse_forms
from .kv_docs import KVDocsTask
from .models import ModelSpec, build_model, count_parameters, set_encoder_length, state_floats
from .mqar import MQARTask
from .set_disjointness import SetDisjointnessTask
from .vocab import task_tokenizer

TASKS = ("mqar", "sd", "kv-docs")


def make_task(name: str, **options):
    classes = {"mqar": MQARTask, "sd": SetDisjointnessTask, "kv-docs": KVDocsTask, "kv_docs": KVDocsTask}
    if name not in classes:
        raise JRTError(f"task {name!r} is unknown: use one of {', '.join(TASKS)}")
    cls = classes[name]
    known = {f.name for f in fields(cls)} - {"name"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise JRTError(f"task {name!r} has no option {', '.join(unknown)}: use {', '.join(sorted(known))}")
    return cls(**options)


@dataclass
class TrainConfig:
    task: str = "mqar"
    task_options: dict[str, Any] = field(default_factory=dict)
    model: ModelSpec = field(default_factory=lambda: ModelSpec("based"))
    forms: tuple[str, ...] = tuple(f.value for f in ALL_FORMS)
    batch_size: int = 256
    max_steps: int = 5000
    time_budget_s: float = 0.0  # 0 = no time limit
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_frac: float = 0.1
    seed: int = 0
    eval_examples: int = 1000
    eval_seed: int = 10_000
    bf16: bool = True
    log_every: int = 100
    data_workers: int = 0  # processes drawing training batches (kv-docs text is drawn in Python)
    init_from: str | None = None  # continue from a checkpoint of the same model (a run_job folder)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["forms"] = list(self.forms)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["model"] = ModelSpec(**d["model"]) if isinstance(d.get("model"), dict) else d.get("model")
        d["forms"] = tuple(d.get("forms", cls.forms))
        return cls(**d)


def _parts(
    task, batch_size: int, generator: torch.Generator, forms, per_form: bool
) -> list[tuple[TokenBatch, int | None]]:
    """The batches of one step: one mixed batch, or one per (form, variant) when the model needs the
    encoder length of each layout (JRT-RNN). Each part comes with its prompt length."""
    if not per_form:
        return [(task.sample_mixture(batch_size, generator, forms), None)]
    combos = [(f, v) for f in forms for v in task.variants()]
    n = max(1, batch_size // len(combos))
    parts = []
    for f, v in combos:
        batch = task.sample(n, generator, f, v)
        parts.append((batch, prompt_length(batch)))
    return parts


class _PartStream(torch.utils.data.IterableDataset):
    """Endless training steps; each worker process draws from its own seeded stream."""

    def __init__(self, task, batch_size: int, seed: int, forms, per_form: bool):
        self.task, self.batch_size, self.seed, self.forms, self.per_form = (
            task,
            batch_size,
            seed,
            forms,
            per_form,
        )

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        generator = torch.Generator().manual_seed(self.seed + 1_000_003 * worker)
        while True:
            yield _parts(self.task, self.batch_size, generator, self.forms, self.per_form)


def _step_stream(task, config: TrainConfig, forms, per_form: bool):
    dataset = _PartStream(task, config.batch_size, config.seed, forms, per_form)
    if config.data_workers <= 0:
        return iter(dataset)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=config.data_workers, prefetch_factor=4, persistent_workers=False
    )
    return iter(loader)


def prompt_length(batch: TokenBatch) -> int:
    """Tokens before the first scored answer (the same in every row of a fixed-layout batch)."""
    scored = (batch.targets != IGNORE).any(dim=0).nonzero()
    return int(scored[0].item()) if scored.numel() else batch.input_ids.shape[1]


def _logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids).logits


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def _lr_factor(progress: float, warmup: float) -> float:
    if progress < warmup:
        return max(progress / warmup, 0.01)
    rest = (progress - warmup) / max(1e-9, 1 - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, rest))) * 0.99 + 0.01


def train(config: TrainConfig, device: str | torch.device = "cpu", log=print) -> tuple[torch.nn.Module, dict]:
    """Train one model from scratch; returns (model, history)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise JRTError("device 'cuda' is not available on this machine: train with --device cpu")
    if config.model.family == "gla" and device.type != "cuda":
        raise JRTError(
            "GLA (flash-linear-attention) runs on a CUDA GPU only: use --device cuda or another family"
        )
    forms = parse_forms(config.forms)
    task = make_task(config.task, **config.task_options)
    torch.manual_seed(config.seed)
    per_form = config.model.family == "jrt_rnn"
    # Start the data workers before CUDA is touched in this process.
    stream = _step_stream(task, config, forms, per_form)
    model = build_model(config.model, task.vocab_size, task.pad_id)
    if config.init_from:
        # Continue training: the same architecture, weights from an earlier run.
        start_weights = load_trained(config.init_from).state_dict()
        missing, unexpected = model.load_state_dict(start_weights, strict=False)
        if [k for k in missing if "lm_head" not in k] or unexpected:
            raise JRTError(
                f"init_from {config.init_from} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
    model = model.to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
    )
    history: dict[str, Any] = {"loss": [], "steps": 0}
    start = time.perf_counter()
    model.train()
    step = 0
    while step < config.max_steps:
        elapsed = time.perf_counter() - start
        progress = step / config.max_steps
        if config.time_budget_s:
            progress = max(progress, elapsed / config.time_budget_s)
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = config.lr * _lr_factor(progress, config.warmup_frac)
        parts = next(stream)
        total_scored = sum(int((b.targets != IGNORE).sum()) for b, _ in parts)
        optimizer.zero_grad(set_to_none=True)
        loss_value = 0.0
        for batch, enc_len in parts:
            batch = batch.to(device)
            if enc_len is not None:
                set_encoder_length(model, enc_len)
            with _autocast(device, config.bf16):
                logits = _logits(model, batch.input_ids)
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]),
                batch.targets.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            ) / max(1, total_scored)
            loss.backward()
            loss_value += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % config.log_every == 0 or step == 1:
            history["loss"].append((step, round(loss_value, 4), round(time.perf_counter() - start, 1)))
            log(f"step {step} loss {loss_value:.4f} ({time.perf_counter() - start:.0f}s)")
    history["steps"] = step
    history["train_seconds"] = round(time.perf_counter() - start, 1)
    model.eval()
    return model, history


def _held_out_batches(task, form, variant: str, num_examples: int, seed: int, batch_size: int):
    """The held-out rows of one (form, variant), in batches; the same draw for every form."""
    generator = torch.Generator().manual_seed(seed)
    remaining = num_examples
    while remaining > 0:
        n = min(batch_size, remaining)
        remaining -= n
        yield task.sample(n, generator, form, variant) if variant else task.sample(n, generator, form)


@torch.no_grad()
def _score_held_out(model, task, forms, score_batch, *, num_examples, seed, batch_size, device, bf16):
    """``{form: {variant or "all": right / total}}`` over the held-out draw, where
    ``score_batch(logits, batch)`` gives (right, total) for one batch."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out: dict[str, dict[str, float]] = {}
    was_training = model.training
    model.eval()
    for form in parse_forms(forms):
        out[form.value] = {}
        for variant in task.variants():
            right = total = 0
            for batch in _held_out_batches(task, form, variant, num_examples, seed, batch_size):
                _read_prompt_non_causally(model, task, batch)
                batch = batch.to(device)
                with _autocast(device, bf16):
                    logits = _logits(model, batch.input_ids)
                r, t = score_batch(logits, batch)
                right += r
                total += t
            out[form.value][variant or "all"] = right / max(1, total)
    model.train(was_training)
    return out


def evaluate(
    model: torch.nn.Module,
    task,
    forms=ALL_FORMS,
    *,
    num_examples: int = 1000,
    seed: int = 10_000,
    batch_size: int = 250,
    device: str | torch.device | None = None,
    bf16: bool = True,
) -> dict[str, dict[str, float]]:
    """Held-out accuracy per form (and per variant, e.g. set-disjointness order).

    An answer is right when the model's argmax is right at every one of its positions, which is
    exactly when greedy decoding reproduces it. MQAR counts each queried value, set disjointness
    each row (all marks right), kv-docs each answer. The held-out draw uses ``seed`` (training
    draws from the training seed's stream), identical for every form: the same facts in each form.
    Returns ``{form: {variant or "all": accuracy}}``.
    """
    return _score_held_out(
        model,
        task,
        forms,
        lambda logits, batch: _answers_right(logits.argmax(-1), batch),
        num_examples=num_examples,
        seed=seed,
        batch_size=batch_size,
        device=device,
        bf16=bf16,
    )


def evaluate_sd_found(
    model: torch.nn.Module,
    task: SetDisjointnessTask,
    forms=ALL_FORMS,
    *,
    num_examples: int = 1000,
    seed: int = 10_000,
    batch_size: int = 250,
    bf16: bool = True,
) -> dict[str, dict[str, float]]:
    """Set disjointness scored as "names the shared element": a row is right when, among the
    elements of the second set, the model's P(YES) is highest at the shared one.

    Unlike the all-marks score of :func:`evaluate`, this does not depend on how many marks a row
    has (the second set is the long one when the short set comes first). The orders still differ
    in chance, 1 / (size of the second set), so compare each order with its own chance level.
    """
    from .set_disjointness import NO, YES

    def names_shared_element(logits, batch) -> tuple[int, int]:
        logits = logits.float()
        scored = batch.targets != IGNORE
        margin = (logits[..., YES] - logits[..., NO]).masked_fill(~scored, float("-inf"))
        pick = margin.argmax(dim=1)
        is_yes = batch.targets.gather(1, pick[:, None]).squeeze(1) == YES
        return int(is_yes.sum()), batch.input_ids.shape[0]

    return _score_held_out(
        model,
        task,
        forms,
        names_shared_element,
        num_examples=num_examples,
        seed=seed,
        batch_size=batch_size,
        device=None,
        bf16=bf16,
    )


def _read_prompt_non_causally(model, task, batch: TokenBatch) -> None:
    """JRT-RNN reads everything before the first answer as its encoder (one length per batch)."""
    if not _has_prefix(model):
        return
    if isinstance(task, KVDocsTask):
        raise JRTError("JRT-RNN needs one prompt length per batch; kv-docs rows vary in length")
    set_encoder_length(model, prompt_length(batch))


def _has_prefix(model) -> bool:
    return type(model).__name__ == "JRTForCausalLM" and "prefix_linear" in model.config.layer_mixers


def _answers_right(pred: torch.Tensor, batch: TokenBatch) -> tuple[int, int]:
    scored = batch.groups >= 0
    n = batch.num_answers
    wrong = torch.zeros(n, dtype=torch.long, device=pred.device)
    g = batch.groups[scored]
    wrong.index_add_(0, g, (pred[scored] != batch.targets[scored]).long())
    return int((wrong == 0).sum()), n


def eval_lengths(task, forms=ALL_FORMS) -> dict[str, int]:
    """Prompt length (tokens before the answers) per form, for state accounting."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for form in parse_forms(forms):
        batch = (
            task.sample(8, gen, form, task.variants()[0]) if task.variants()[0] else task.sample(8, gen, form)
        )
        out[form.value] = int(batch.input_ids.shape[1])
    return out


@contextmanager
def differentiable_kernels():
    """The project's Triton linear-attention kernels are inference-only (no backward): training
    and the matching evaluation of Based / JRT-RNN run the PyTorch reference ops."""
    old = os.environ.get("JRT_KERNELS")
    os.environ["JRT_KERNELS"] = "reference"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("JRT_KERNELS", None)
        else:
            os.environ["JRT_KERNELS"] = old


def run_job(
    config: TrainConfig, out_dir: str | Path | None, device: str | torch.device = "cpu", log=print
) -> dict:
    """Train, evaluate in every form, save the checkpoint (``save_pretrained``) and ``result.json``."""
    with differentiable_kernels():
        return _run_job(config, out_dir, device, log)


def _run_job(config: TrainConfig, out_dir, device, log) -> dict:
    model, history = train(config, device=device, log=log)
    task = make_task(config.task, **config.task_options)
    forms = _eval_forms(config)
    accuracy = evaluate(
        model, task, forms, num_examples=config.eval_examples, seed=config.eval_seed, bf16=config.bf16
    )
    lengths = eval_lengths(task, forms)
    result = {
        "config": config.to_dict(),
        "label": config.model.label,
        "family": config.model.family,
        "parameters": count_parameters(model),
        "state_floats": state_floats(model, lengths["default"]),
        "state_floats_per_form": {f: state_floats(model, n) for f, n in lengths.items()},
        "sequence_lengths": lengths,
        "accuracy": accuracy,
        "history": history,
        "device": torch.cuda.get_device_name(0) if torch.device(device).type == "cuda" else "cpu",
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        task_tokenizer(task).save_pretrained(out_dir)
        (out_dir / "result.json").write_text(json.dumps(result, indent=1))
    return result


def load_trained(path: str | Path, device: str | torch.device = "cpu"):
    """A model saved by :func:`run_job` (or any of the families' ``save_pretrained`` dirs)."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise JRTError(f"{path} has no config.json: pass a directory written by `jrt synth train`")
    model_type = json.loads(cfg_file.read_text()).get("model_type")
    if model_type == "mamba2":
        from transformers import Mamba2ForCausalLM as cls
    elif model_type == "gla":
        from fla.models import GLAForCausalLM as cls
    elif model_type == "llama":
        from transformers import LlamaForCausalLM as cls
    elif model_type == "jrt_hybrid":
        from ..models.modeling_jrt import JRTForCausalLM as cls
    else:
        raise JRTError(f"{path}: model_type {model_type!r} is not one of the synthetic families")
    return cls.from_pretrained(path).to(device).eval()


def evaluate_saved(
    path: str | Path,
    *,
    num_examples: int = 1000,
    seed: int = 10_000,
    device: str = "cpu",
    task_options: dict[str, Any] | None = None,
    found: bool = False,
):
    """Evaluate a directory written by :func:`run_job`: ``(accuracy, model, prompt lengths)``.

    ``task_options`` override the training task's sizes (e.g. more pairs, longer documents) to
    see how a model copes beyond what it was trained on. ``found``: score set disjointness with
    :func:`evaluate_sd_found` instead of all marks.
    """
    path = Path(path)
    result_file = path / "result.json"
    if not result_file.is_file():
        raise JRTError(f"{path} has no result.json: pass a directory written by `jrt synth train`")
    config = TrainConfig.from_dict(json.loads(result_file.read_text())["config"])
    task = make_task(config.task, **{**config.task_options, **(task_options or {})})
    if found and not isinstance(task, SetDisjointnessTask):
        raise JRTError(f"{path} was trained on {config.task!r}: the found score is for set disjointness (sd)")
    model = load_trained(path, device=device)
    scorer = evaluate_sd_found if found else evaluate
    with differentiable_kernels():
        forms = _eval_forms(config)
        accuracy = scorer(
            model, task, forms, num_examples=num_examples, seed=seed, bf16=str(device).startswith("cuda")
        )
    return accuracy, model, eval_lengths(task, forms)


def _eval_forms(config: TrainConfig):
    """The three standard forms, and any other form the model was trained on (context_first)."""
    return ALL_FORMS + tuple(f for f in parse_forms(config.forms) if f not in ALL_FORMS)
