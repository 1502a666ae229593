"""Run many small trainings side by side on one device and collect their results.

Small recall models are launch-bound on a large GPU: one process leaves it mostly idle, so the
sweep starts one process per job (up to ``workers`` at a time) and every job trains for the same
wall-clock budget. Each job writes its checkpoint (``save_pretrained``) and ``result.json``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
import traceback
from pathlib import Path

from .forms import ALL_FORMS
from .models import ModelSpec
from .training import TrainConfig

# The sizes of docs/quality.md: small enough that a model escapes the recall plateau within a few
# thousand steps (the budget of one short GPU run), large enough that the smallest states fail.
MQAR_OPTIONS = {"num_pairs": 16, "num_queries": 4, "num_keys": 32, "num_values": 32}
SD_OPTIONS = {"short_size": 4, "long_size": 16, "num_elements": 60}
KV_OPTIONS = {"num_queries": 4}
BYTE_EOS = 256


def plan(name: str, time_budget_s: float) -> dict[str, TrainConfig]:
    """Named job lists: ``gpu`` and ``cpu`` (the two halves of docs/quality.md), ``smoke`` (tiny)."""
    jobs: dict[str, TrainConfig] = {}

    def add(job: str, task: str, options: dict, spec: ModelSpec, **kw):
        kw.setdefault("lr", 3e-3)
        kw.setdefault("batch_size", 128)
        jobs[job] = TrainConfig(
            task=task, task_options=dict(options), model=spec, time_budget_s=time_budget_s, **kw
        )

    mqar = lambda job, spec, **kw: add(job, "mqar", MQAR_OPTIONS, spec, **kw)  # noqa: E731
    kv = dict(batch_size=64, lr=2e-3, eval_examples=500, data_workers=1)

    def kv_long_records(job: str, f: int, fields: tuple[int, int], num_queries: int, **kw):
        """Based (3 blocks, width 128) on kv-docs records of ``fields`` (min, max) facts."""
        add(
            job,
            "kv-docs",
            {"num_queries": num_queries, "min_fields": fields[0], "max_fields": fields[1]},
            ModelSpec("based", 128, 3, {"feature_dim": f, "eos_token_id": BYTE_EOS}),
            **dict(kv, batch_size=128, max_steps=8000, data_workers=2, **kw),
        )

    # The 64-pair MQAR of the third round on, its run settings, and the kv-docs settings of the
    # fourth round on (open field names; "lead": every training question up front).
    m64 = {"num_pairs": 64, "num_queries": 8, "num_keys": 254, "num_values": 256}
    long = dict(batch_size=256, lr=2e-3, max_steps=8000)
    two = ("default", "jrt")
    three = tuple(f.value for f in ALL_FORMS)
    open_kv = {"num_queries": 4, "min_fields": 8, "max_fields": 14, "field_names": "open"}
    lead = {**open_kv, "questions_up_front": "all"}
    kv_run = dict(kv, batch_size=128, max_steps=8000, data_workers=2)

    def based(f: int) -> ModelSpec:
        return ModelSpec("based", 128, 2, {"feature_dim": f})

    def jrt_rnn(f: int) -> ModelSpec:
        return ModelSpec("jrt_rnn", 128, 2, {"feature_dim": f})

    def byte_based(f: int) -> ModelSpec:
        return ModelSpec("based", 128, 3, {"feature_dim": f, "eos_token_id": BYTE_EOS})

    def more(job: str, task: str, options: dict, spec: ModelSpec, start: str, forms=None, **run):
        """A continuation of the checkpoint in runs/init/<start> (a job of an earlier plan)."""
        extra = {"forms": forms} if forms else {}
        add(job, task, options, spec, init_from=f"runs/init/{start}", **extra, **run)

    if name == "smoke":
        small = {"num_pairs": 8, "num_queries": 4, "num_keys": 30, "num_values": 32}
        few = dict(max_steps=30, batch_size=16, eval_examples=64)
        add("mqar-attention", "mqar", small, ModelSpec("attention", 32, 1), **few)
        add("mqar-based-f2", "mqar", small, ModelSpec("based", 32, 1, {"feature_dim": 2}), **few)
        add("mqar-jrt_rnn-f2", "mqar", small, ModelSpec("jrt_rnn", 32, 1, {"feature_dim": 2}), **few)
        add("mqar-gla-k16", "mqar", small, ModelSpec("gla", 32, 1, {"expand_k": 0.5}), **few)
        add(
            "sd-based-f2",
            "sd",
            {"short_size": 2, "long_size": 6, "num_elements": 28},
            ModelSpec("based", 32, 1, {"feature_dim": 2}),
            **few,
        )
        add(
            "kv-based-f2",
            "kv-docs",
            KV_OPTIONS,
            ModelSpec("based", 32, 1, {"feature_dim": 2, "eos_token_id": BYTE_EOS}),
            max_steps=3,
            batch_size=4,
            eval_examples=8,
        )
        return jobs
    if name == "gpu":
        add(
            "kv-based-d128-f4",
            "kv-docs",
            KV_OPTIONS,
            ModelSpec("based", 128, 3, {"feature_dim": 4, "eos_token_id": BYTE_EOS}),
            **kv,
        )
        add(
            "kv-based-d128-f8",
            "kv-docs",
            KV_OPTIONS,
            ModelSpec("based", 128, 3, {"feature_dim": 8, "eos_token_id": BYTE_EOS}),
            **kv,
        )
        add(
            "kv-attention",
            "kv-docs",
            KV_OPTIONS,
            ModelSpec("attention", 128, 2, {"eos_token_id": BYTE_EOS}),
            **kv,
        )
        mqar("mqar-attention", ModelSpec("attention", 64, 2))
        mqar("mqar-based-f2", ModelSpec("based", 64, 2, {"feature_dim": 2}))
        mqar("mqar-jrt_rnn-f2", ModelSpec("jrt_rnn", 64, 2, {"feature_dim": 2}))
        mqar("mqar-jrt_rnn-f4", ModelSpec("jrt_rnn", 64, 2, {"feature_dim": 4}))
        mqar("mqar-mamba2-n4", ModelSpec("mamba2", 64, 2, {"state_size": 4, "chunk_size": 16}))
        mqar("mqar-mamba2-n16", ModelSpec("mamba2", 64, 2, {"state_size": 16, "chunk_size": 16}))
        mqar("mqar-gla-k16", ModelSpec("gla", 64, 2, {"expand_k": 0.5}))
        mqar("mqar-gla-k32", ModelSpec("gla", 64, 2, {"expand_k": 1.0}))
        add("sd-based-f2", "sd", SD_OPTIONS, ModelSpec("based", 64, 2, {"feature_dim": 2}))
        return jobs
    if name == "gpu-jrt":
        # One short GPU call: the setting measured to learn (width 128, 2 blocks, batch 256, ~5 000
        # steps) at 64 pairs, where the small states cannot hold every pair; plus a kv-docs model
        # with a small state and long records, a candidate demo that needs the second read.
        big = {"num_pairs": 64, "num_queries": 8, "num_keys": 254, "num_values": 256}
        long = dict(batch_size=256, lr=2e-3, max_steps=5000)
        for f in (2, 4):
            add(f"mqar64-based-f{f}", "mqar", big, ModelSpec("based", 128, 2, {"feature_dim": f}), **long)
        add(
            "mqar64-mamba2-n4",
            "mqar",
            big,
            ModelSpec("mamba2", 128, 2, {"state_size": 4, "chunk_size": 16}),
            **long,
        )
        add("mqar64-attention", "mqar", big, ModelSpec("attention", 128, 2), **long)
        add(
            "kv-long-based-d128-f2",
            "kv-docs",
            {"num_queries": 4, "min_fields": 10, "max_fields": 16},
            ModelSpec("based", 128, 3, {"feature_dim": 2, "eos_token_id": BYTE_EOS}),
            **kv,
        )
        return jobs
    if name == "gpu-next":
        # Fewer jobs at a time, >= 5000 steps each, MQAR large enough to pressure the small states.
        big = {"num_pairs": 64, "num_queries": 8, "num_keys": 254, "num_values": 256}
        long = dict(batch_size=256, lr=2e-3, max_steps=6000)
        for f in (2, 4, 8):
            add(f"mqar64-based-f{f}", "mqar", big, ModelSpec("based", 128, 2, {"feature_dim": f}), **long)
            add(f"mqar64-jrt_rnn-f{f}", "mqar", big, ModelSpec("jrt_rnn", 128, 2, {"feature_dim": f}), **long)
        for n in (4, 16):
            add(
                f"mqar64-mamba2-n{n}",
                "mqar",
                big,
                ModelSpec("mamba2", 128, 2, {"state_size": n, "chunk_size": 16}),
                **long,
            )
        add("mqar64-attention", "mqar", big, ModelSpec("attention", 128, 2), **long)
        for f in (2, 4, 8):
            add(f"sd-based-f{f}", "sd", SD_OPTIONS, ModelSpec("based", 128, 2, {"feature_dim": f}), **long)
        return jobs
    if name == "gpu-final":
        # Two halves, one per GPU (``--only mqar`` / ``--only kv sd``), 4 jobs at a time each:
        # MQAR at 64 and 128 pairs with the Based state at its smallest learning size (f=4), JRT-RNN
        # at the same state, and the conv + softmax-attention ceiling; kv-docs with records long
        # enough that a small state must choose what to keep (demo candidates); set disjointness.
        m128 = {"num_pairs": 128, "num_queries": 16, "num_keys": 254, "num_values": 256}
        add("mqar64-based-f4", "mqar", m64, based(4), **long)
        add("mqar128-based-f4", "mqar", m128, based(4), **long)
        add("mqar64-jrt_rnn-f4", "mqar", m64, jrt_rnn(4), **long)
        add("mqar64-conv_attention", "mqar", m64, ModelSpec("conv_attention", 128, 2), **long)
        for f, lo, hi in ((4, 8, 12), (2, 6, 10)):
            kv_long_records(f"kv{lo}-{hi}-based-f{f}", f, (lo, hi), 4)
        for f in (2, 4):
            add(f"sd-based-f{f}", "sd", SD_OPTIONS, based(f), **long)
        return jobs
    if name == "gpu-final-2":
        # Second half: Based trained on the default and JRT forms only (half the batch each), a
        # smaller Based state (f=3), Mamba-2 at 64 pairs, JRT-RNN trained on the default form (it
        # reads the prompt non-causally, so that form is its use) at f=4 and f=5 (state <= 1/8 of the
        # ceiling's KV cache), and the kv-docs models of gpu-final fine-tuned with one question per
        # row, the layout of `jrt run` (with more, the first question up front tells little about
        # what to keep). Start folders: runs/init/<job of gpu-final>.
        for f in (4, 3):
            add(f"mqar64-based-f{f}-2forms", "mqar", m64, based(f), forms=two, **long)
        mamba2 = ModelSpec("mamba2", 128, 2, {"state_size": 8, "chunk_size": 32})
        add("mqar64-mamba2-n8", "mqar", m64, mamba2, **long)
        more("mqar64-jrt_rnn-f4-default", "mqar", m64, jrt_rnn(4), "mqar64-jrt_rnn-f4", ("default",), **long)
        add("mqar64-jrt_rnn-f5-default", "mqar", m64, jrt_rnn(5), forms=("default",), **long)
        for f, lo, hi in ((4, 8, 12), (2, 6, 10)):
            job = f"kv{lo}-{hi}-based-f{f}"
            kv_long_records(f"{job}-q1", f, (lo, hi), 1, lr=1e-3, init_from=f"runs/init/{job}")
        return jobs
    if name == "gpu-open":
        # Two halves, one per GPU (``--only mqar`` / ``--only kvo``). MQAR: the 64-pair models of
        # gpu-final / gpu-final-2 trained on (their forms) further — Based f=4 on the default and
        # JRT forms only, the undertrained 2-form Based f=3/f=4 runs, JRT-RNN f=4 on the default
        # form at a lower rate. kv-docs with open field names (an associative memory: demo
        # candidates), started from the family-field models, which already read the phrasings,
        # and the conv + softmax-attention ceiling from scratch. Start folders: runs/init/<job>.
        more(
            "mqar64-based-f4-more2forms",
            "mqar",
            m64,
            based(4),
            "mqar64-based-f4",
            two,
            **{**long, "lr": 1e-3},
        )
        for f in (3, 4):
            job = f"mqar64-based-f{f}-2forms"
            more(f"{job}-more", "mqar", m64, based(f), job, two, **long)
        start = "mqar64-jrt_rnn-f4-default"
        more(f"{start}-more", "mqar", m64, jrt_rnn(4), start, ("default",), **{**long, "lr": 7e-4})
        for f, start, forms in (
            (2, "kv6-10-based-f2", None),
            (4, "kv8-12-based-f4", None),
            (2, "kv6-10-based-f2", two),
        ):
            job = f"kvo8-14-based-f{f}" + ("-2forms" if forms else "")
            more(job, "kv-docs", open_kv, byte_based(f), start, forms, **kv_run)
        ceiling = ModelSpec("conv_attention", 128, 3, {"eos_token_id": BYTE_EOS})
        add("kvo8-14-conv_attention", "kv-docs", open_kv, ceiling, **kv_run)
        return jobs
    if name == "gpu-lead":
        # kv-docs with open field names, every training question of the question-first / JRT rows
        # up front (questions_up_front="all"): demo candidates, started from the family-field
        # models (runs/init/<job of gpu-final>). Halves ``--only kvl-a`` / ``--only kvl-b``.
        start = {2: "kv6-10-based-f2", 4: "kv8-12-based-f4"}
        for job, f, forms, changes, run_changes in (
            ("kvl-a-f2-2forms", 2, two, {}, {}),
            ("kvl-a-f2-3forms", 2, three, {}, {}),
            ("kvl-a-f2-2forms-lr1e-3", 2, two, {}, {"lr": 1e-3}),
            ("kvl-a-f2-2forms-q6", 2, two, {"num_queries": 6}, {}),
            ("kvl-b-f4-2forms", 4, two, {}, {}),
            ("kvl-b-f4-3forms", 4, three, {}, {}),
            ("kvl-b-f2-2forms-10-16", 2, two, {"min_fields": 10, "max_fields": 16}, {}),
            ("kvl-b-f4-2forms-q6", 4, two, {"num_queries": 6}, {}),
        ):
            more(
                job,
                "kv-docs",
                {**lead, **changes},
                byte_based(f),
                start[f],
                forms,
                **{**kv_run, **run_changes},
            )
        return jobs
    if name == "gpu-lead-2":
        # One GPU, 4 jobs: the demo model (kvl-a-f2-3forms) trained further at two rates; JRT-RNN
        # f=4 on the default form further (toward 99 % of the ceiling at 64 pairs); Based f=4 on
        # MQAR further on all three forms (three forms are what made kv-docs gain from the
        # second read). Start folders: runs/init/<job>.
        for job, lr in (("kvl-c-f2-3forms-more", 2e-3), ("kvl-c-f2-3forms-more-lr1e-3", 1e-3)):
            more(job, "kv-docs", lead, byte_based(2), "kvl-a-f2-3forms", three, **{**kv_run, "lr": lr})
        start = "mqar64-jrt_rnn-f4-default-more"
        more(f"{start}2", "mqar", m64, jrt_rnn(4), start, ("default",), **{**long, "lr": 5e-4})
        start = "mqar64-based-f4-more2forms"
        more("mqar64-based-f4-3forms-more", "mqar", m64, based(4), start, three, **{**long, "lr": 1e-3})
        return jobs
    if name == "gpu-lead-3":
        # One GPU, 4 jobs, all continuations (runs/init/<job>): JRT-RNN on the default form at f=4
        # (from gpu-lead-2) and at f=5 (8 572 floats, still <= 1/8 of the ceiling's KV cache at
        # 64 pairs, from gpu-final-2); Based f=4 on MQAR's three forms and the new demo model
        # (kvl-c-f2-3forms-more) once more at a lower rate.
        for job, f, start, lr in (
            ("mqar64-jrt_rnn-f4-default-more3", 4, "mqar64-jrt_rnn-f4-default-more2", 3e-4),
            ("mqar64-jrt_rnn-f5-default-more", 5, "mqar64-jrt_rnn-f5-default", 1e-3),
        ):
            more(job, "mqar", m64, jrt_rnn(f), start, ("default",), **{**long, "lr": lr})
        start = "mqar64-based-f4-3forms-more"
        more(f"{start}2", "mqar", m64, based(4), start, three, **{**long, "lr": 7e-4})
        start = "kvl-c-f2-3forms-more"
        more("kvl-d-f2-3forms-more2", "kv-docs", lead, byte_based(2), start, three, **{**kv_run, "lr": 1e-3})
        return jobs
    if name == "gpu-mqar-filter":
        # One GPU, 4 jobs: MQAR where a state that keeps only the queried pairs has room to spare
        # but one that keeps every pair does not — few queries (4) against 32 or 48 pairs at the
        # smallest feature dims — so the question-first and JRT forms can only win by keeping
        # what the leading question line asks for. From scratch, except the last job, which
        # continues the gpu-lead-3 Based f=4 model (runs/init/<job>) on 4 queries of 64 pairs.
        q4 = {"num_queries": 4, "num_keys": 254, "num_values": 256}
        add("mqar32q4-based-f2-3forms", "mqar", {**q4, "num_pairs": 32}, based(2), forms=three, **long)
        add("mqar32q4-based-f2-2forms", "mqar", {**q4, "num_pairs": 32}, based(2), forms=two, **long)
        add("mqar48q4-based-f3-3forms", "mqar", {**q4, "num_pairs": 48}, based(3), forms=three, **long)
        start = "mqar64-based-f4-3forms-more2"
        more(
            "mqar64q4-based-f4-3forms-more3",
            "mqar",
            {**m64, **q4},
            based(4),
            start,
            three,
            **{**long, "lr": 7e-4},
        )
        return jobs
    if name == "gpu-sd":
        # Set disjointness with sets large enough (8 and 48 of 252 elements) that the smallest
        # Based states cannot hold the long set: the order dependence of the paper's Fig. 2.
        big_sets = {"short_size": 8, "long_size": 48, "num_elements": 252}
        run = dict(batch_size=256, lr=2e-3, max_steps=8000)
        for width, f in ((64, 1), (64, 2), (128, 1), (128, 2)):
            add(
                f"sd48-based-d{width}-f{f}",
                "sd",
                big_sets,
                ModelSpec("based", width, 2, {"feature_dim": f}),
                **run,
            )
        for width, f in ((64, 3), (64, 4)):
            add(
                f"sd48-based-d{width}-f{f}",
                "sd",
                big_sets,
                ModelSpec("based", width, 2, {"feature_dim": f}),
                **run,
            )
        return jobs
    if name == "cpu":
        # A smaller copy of the MQAR sweep that trains on two CPU cores in minutes.
        tiny = {"num_pairs": 8, "num_queries": 2, "num_keys": 16, "num_values": 16}
        small = dict(batch_size=64, max_steps=2000, eval_examples=1000)
        for f in (1, 2, 4):
            add(f"mqar8-based-f{f}", "mqar", tiny, ModelSpec("based", 32, 2, {"feature_dim": f}), **small)
        add("mqar8-attention", "mqar", tiny, ModelSpec("attention", 32, 2), **small)
        return jobs
    raise ValueError(f"unknown plan {name!r}")


def _worker(job: str, config_dict: dict, out_dir: str, device: str) -> None:
    import torch

    torch.set_num_threads(1)
    from .training import TrainConfig, run_job

    log_path = Path(out_dir) / "logs" / f"{job}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as fh:

        def log(msg: str) -> None:
            fh.write(msg + "\n")
            fh.flush()

        try:
            config = TrainConfig.from_dict(config_dict)
            result = run_job(config, Path(out_dir) / "ckpt" / job, device=device, log=log)
            result["job"] = job
            (Path(out_dir) / "results").mkdir(exist_ok=True)
            (Path(out_dir) / "results" / f"{job}.json").write_text(json.dumps(result, indent=1))
            log("done " + json.dumps(result["accuracy"]))
        except Exception:
            log(traceback.format_exc())
            raise


def run_sweep(
    jobs: dict[str, TrainConfig],
    out_dir: str | Path,
    *,
    device: str = "cuda",
    workers: int = 8,
    job_timeout_s: float | None = None,
) -> list[dict]:
    """Run ``jobs`` in up to ``workers`` processes; returns the results that finished.

    A job still running ``job_timeout_s`` after it started is killed (a hung job must not keep
    the others' results from being written). ``results.json`` is rewritten after every job, so a
    sweep cut short still leaves what finished.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    pending = list(jobs.items())
    running: dict[str, tuple[mp.Process, float]] = {}
    started = time.time()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    while pending or running:
        while pending and len(running) < workers:
            job, config = pending.pop(0)
            p = ctx.Process(target=_worker, args=(job, config.to_dict(), str(out_dir), device), daemon=False)
            p.start()
            running[job] = (p, time.time())
        time.sleep(1.0)
        for job, (p, t0) in list(running.items()):
            if p.is_alive() and job_timeout_s is not None and time.time() - t0 > job_timeout_s:
                p.kill()
                p.join()
                running.pop(job)
                print(f"[{time.time() - started:6.0f}s] {job} killed after {job_timeout_s:.0f}s", flush=True)
            elif not p.is_alive():
                p.join()
                running.pop(job)
                print(f"[{time.time() - started:6.0f}s] {job} exit={p.exitcode}", flush=True)
                (out_dir / "results.json").write_text(json.dumps(collect(out_dir), indent=1))
    return collect(out_dir)


def collect(out_dir: str | Path) -> list[dict]:
    results = []
    for path in sorted((Path(out_dir) / "results").glob("*.json")):
        results.append(json.loads(path.read_text()))
    return results
