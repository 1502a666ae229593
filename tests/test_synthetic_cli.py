"""`jrt synth train|eval` on CPU with a tiny model, and its one-line errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()
# a one-block Based model of width 16: trains in a second on CPU
TINY_BASED = "--family based --hidden-size 16 --layers 1 --option feature_dim=2".split()
TINY = [
    "--task-option",
    "num_pairs=4",
    "--task-option",
    "num_queries=2",
    "--task-option",
    "num_keys=8",
    "--task-option",
    "num_values=8",
]


def test_synth_train_then_eval(tmp_path):
    out = tmp_path / "model"
    args = [
        "synth",
        "train",
        "--out",
        str(out),
        *TINY_BASED,
        *TINY,
        "--steps",
        "5",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--eval-examples",
        "16",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    saved = json.loads((out / "result.json").read_text())
    assert set(saved["accuracy"]) == {"default", "question_first", "jrt"}
    # the checkpoint is an ordinary model folder: the project's loader reads it, tokenizer included
    from jrt_prompt import load_model

    loaded = load_model(str(out))
    assert loaded.adapter.family == "based"
    assert loaded.tokenizer("k3 v1 | k3")["input_ids"] == [5, 11, 1, 5]
    # continuing from the checkpoint starts from its weights (lr 0: nothing moves)
    import torch

    from jrt_prompt.synthetic.training import TrainConfig, load_trained, train

    config = TrainConfig.from_dict(saved["config"])
    config.init_from, config.lr, config.max_steps = str(out), 0.0, 1
    continued, _ = train(config, log=lambda _: None)
    reference = load_trained(out).state_dict()
    for name, tensor in continued.state_dict().items():
        assert torch.equal(tensor, reference[name]), name

    # the same through the command: --init-from with lr 0 saves the starting weights again
    again = tmp_path / "again"
    cont = [a if a != str(out) else str(again) for a in args]
    cont += ["--init-from", str(out), *"--lr 0 --steps 1".split()]
    result = runner.invoke(app, cont)
    assert result.exit_code == 0, result.output
    assert json.loads((again / "result.json").read_text())["config"]["init_from"] == str(out)
    for name, tensor in load_trained(again).state_dict().items():
        assert torch.equal(tensor, reference[name]), name

    result = runner.invoke(app, ["synth", "eval", str(out), "--examples", "16"])
    assert result.exit_code == 0, result.output
    assert "question_first" in result.output


def test_synth_errors_are_one_line(tmp_path):
    result = runner.invoke(
        app, ["synth", "train", "--out", str(tmp_path / "x"), "--family", "lstm", "--device", "cpu"]
    )
    assert result.exit_code == 2
    assert "model family 'lstm' is unknown" in result.output
    result = runner.invoke(app, ["synth", "eval", str(tmp_path)])
    assert result.exit_code == 2 and "result.json" in result.output


def test_conv_attention_ceiling_trains_saves_and_counts_its_kv_cache(tmp_path):
    """The ceiling family is the Based stack with softmax attention: loadable, KV cache grows with length."""
    from jrt_prompt.synthetic.models import ModelSpec, build_model, state_floats
    from jrt_prompt.synthetic.training import TrainConfig, load_trained, run_job

    spec = ModelSpec("conv_attention", 16, 1)
    config = TrainConfig(
        task="mqar",
        task_options={"num_pairs": 4, "num_queries": 2, "num_keys": 8, "num_values": 8},
        model=spec,
        max_steps=3,
        batch_size=8,
        eval_examples=8,
    )
    result = run_job(config, tmp_path / "ceiling", log=lambda _: None)
    assert result["family"] == "conv_attention"
    model = load_trained(tmp_path / "ceiling")
    assert model.config.layer_mixers == ["base_conv", "attention"]
    based = build_model(ModelSpec("based", 16, 1, {"feature_dim": 2}), 18, 0)
    # attention keeps 2 x length x width floats; Based a fixed state
    assert state_floats(model, 100) - state_floats(model, 50) == 2 * 50 * 16
    assert state_floats(based, 100) == state_floats(based, 50)


def test_synth_eval_found_score_for_set_disjointness_only(tmp_path):
    sd = tmp_path / "sd"
    base = ["synth", "train", *TINY_BASED]
    small = ["--steps", "2", "--batch-size", "8", "--device", "cpu", "--eval-examples", "8"]
    sd_sizes = [
        "--task-option",
        "short_size=2",
        "--task-option",
        "long_size=4",
        "--task-option",
        "num_elements=12",
    ]
    result = runner.invoke(app, [*base, "--out", str(sd), "--task", "sd", *sd_sizes, *small])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["synth", "eval", str(sd), "--found", "--examples", "8"])
    assert result.exit_code == 0, result.output
    assert "short_first" in result.output and "long_first" in result.output
    mqar = tmp_path / "mqar"
    result = runner.invoke(app, [*base, "--out", str(mqar), *TINY, *small])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["synth", "eval", str(mqar), "--found"])
    assert result.exit_code == 2 and "the found score is for set disjointness" in result.output
