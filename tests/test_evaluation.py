"""`jrt eval` end to end on a tiny random model with local fixture data, and `jrt report`."""

import json
import shutil
from pathlib import Path

import pytest
from test_tasks_formats import EXPECTED
from tiny_models import write_tiny_llama
from typer.testing import CliRunner

from jrt_prompt.errors import JRTError
from jrt_prompt.evaluation import EvalConfig, evaluate, resolve_data
from jrt_prompt.report import load_results, markdown_table
from jrt_prompt.tasks import contains, exact_match, token_f1

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-models")
    return {
        "llama": write_tiny_llama(root / "tiny-llama"),
        "llama-b": write_tiny_llama(root / "tiny-llama-b", seed=1),
    }


def test_resolve_data_forms(tmp_path):
    assert resolve_data(["swde", "fda"], [str(FIXTURES)]) == {
        "swde": FIXTURES / "swde.jsonl",
        "fda": FIXTURES / "fda.jsonl",
    }
    assert resolve_data(["based_swde"], [f"swde={tmp_path}/x.jsonl"]) == {"swde": tmp_path / "x.jsonl"}
    assert resolve_data(["drop"], [str(FIXTURES / "drop.jsonl")]) == {"drop": FIXTURES / "drop.jsonl"}
    with pytest.raises(JRTError, match="one file but 2 tasks"):
        resolve_data(["swde", "fda"], [str(FIXTURES / "swde.jsonl")])
    with pytest.raises(JRTError, match="not among"):
        resolve_data(["swde"], [f"fda={FIXTURES / 'fda.jsonl'}"])


def test_eval_cli_two_tasks_both_forms(tmp_path, models):
    from jrt_cli.main import app

    out = tmp_path / "results.json"
    args = ["eval", "--model", str(models["llama"]), "--task", "swde", "--task", "drop", "--repeat", "1",
            "--repeat", "2", "--limit", "2", "--data", str(FIXTURES), "--out", str(out), "--device", "cpu",
            "--max-new-tokens", "6", "--save-prompts"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for word in ("swde", "drop", "default", "JRT", "average"):
        assert word in result.stdout
    doc = json.loads(out.read_text())
    assert [(name, r["task"], r["form"]) for name, r in doc["results"].items()] == [
        ("based_swde", "swde", "default"),
        ("based_swde_twice", "swde", "jrt"),
        ("based_drop", "drop", "default"),
        ("based_drop_twice", "drop", "jrt"),
    ]
    assert doc["versions"]["torch"] and doc["versions"]["transformers"] and "fla" in doc["versions"]
    assert doc["device"]["device"] == "cpu" and doc["config"]["max_new_tokens"] == 6
    for name, entry in doc["results"].items():
        assert entry["n"] == 2 and entry["skipped"] == 0 and doc["n-samples"][name]["effective"] == 2
        examples = [json.loads(line) for line in (out.parent / doc["samples"][name]).read_text().splitlines()]
        assert [e["index"] for e in examples] == [0, 1]
        expected = EXPECTED[entry["task"]]
        for example in examples:
            # the model read exactly the paper's prompt string (no truncation at 1000 tokens here)
            assert example["prompt"] == expected[example["index"]][entry["repeat"] - 1]
            assert example["contains"] == contains(example["prediction"], example["answers"])
            assert example["exact_match"] == exact_match(example["prediction"], example["answers"])
            assert example["f1"] == token_f1(example["prediction"], example["answers"])
            assert 1 <= example["answer_tokens"] <= 6
        values = [e["contains"] for e in examples]
        assert entry["contains,none"] == sum(values) / 2
        # lm-eval-harness's standard error: sample standard deviation over sqrt(n)
        mean = sum(values) / 2
        stderr = (sum((v - mean) ** 2 for v in values) / 1 / 2) ** 0.5
        assert entry["contains_stderr,none"] == pytest.approx(stderr)


def test_eval_truncates_and_skips_like_the_paper(tmp_path, models):
    from jrt_prompt import load_model

    rows = [
        {"text": "Product code: X. Rest of the report.", "key": "product code", "value": "X"},
        {
            "text": "filler " * 200 + "Product code: DXN. " + "tail " * 200,
            "key": "product code",
            "value": "DXN",
        },
    ]
    data = tmp_path / "fda.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = EvalConfig(model="unused", tasks=("fda",), repeats=(1, 2), data={"fda": data}, context_length=250,
                        max_new_tokens=2, save_prompts=True)  # fmt: skip
    doc = evaluate(config, load_model(models["llama"], device="cpu"))
    default, jrt = doc["results"].values()
    assert default["skipped"] == 1 and doc["skipped"]["based_fda"][0]["index"] == 0
    (example,) = doc["samples"]["based_fda"]
    assert example["context_truncated"] and "Product code: DXN" in example["prompt"]
    assert example["prompt_tokens"] <= 200 + len(" Product code:") + 1
    body = doc["samples"]["based_fda_twice"][0]["prompt"][len("Information about Product code. ") : -len(" Product code:")]
    first, second = body.split("\n")
    assert first == second and first.rstrip(".") + ". Product code:" == example["prompt"].rstrip()


def test_eval_fails_fast_on_missing_data(tmp_path):
    from jrt_cli.main import app

    result = CliRunner().invoke(
        app, ["eval", "--model", "demo", "--task", "swde", "--data", f"swde={tmp_path}/no.jsonl"]
    )
    assert result.exit_code == 2 and "does not exist" in result.output
    # the model is checked before the data
    result = CliRunner().invoke(
        app, ["eval", "--model", "nowhere", "--task", "swde", "--data", f"swde={tmp_path}/no.jsonl"]
    )
    assert result.exit_code == 2 and result.output.startswith("error: unknown model 'nowhere'")


def test_eval_rejects_rows_without_the_task_fields(tmp_path):
    data = tmp_path / "drop.jsonl"
    data.write_text(json.dumps({"context": "c", "question": "q", "answers": ["a"]}) + "\n")
    with pytest.raises(JRTError, match="orig_question"):
        evaluate(EvalConfig(model="demo", tasks=("drop",), repeats=(2,), data={"drop": data}))


def test_report_markdown_and_png(tmp_path, models):
    from jrt_cli.main import app

    files = []
    for name in ("llama", "llama-b"):
        out = tmp_path / f"{name}.json"
        args = ["eval", "--model", str(models[name]), "--task", "nq1024", "--task", "triviaqa", "--data", str(FIXTURES),
                "--out", str(out), "--device", "cpu", "--max-new-tokens", "3", "--limit", "1"]  # fmt: skip
        assert CliRunner().invoke(app, args).exit_code == 0
        files.append(out)
    png, md = tmp_path / "chart.png", tmp_path / "report.md"
    result = CliRunner().invoke(app, ["report", *map(str, files), "--png", str(png), "--out", str(md)])
    assert result.exit_code == 0, result.output
    text = md.read_text()
    assert text.startswith("| model | task | n | default (contains) | JRT (contains) | Δ |")
    assert "±" in text or "| 1 |" in text  # n = 1: no standard error
    assert text.count("| nq1024 |") == 2 and text.count("**average** (2 tasks)") == 2
    assert "| tiny-llama | nq1024 |" in text and "| tiny-llama-b | nq1024 |" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(png).shape
    assert width > 300 and height > 200
    assert markdown_table(load_results(files), "f1").startswith("| model | task | n | default (f1)")


def test_report_rejects_other_files(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(JRTError, match="not a `jrt eval` results file"):
        load_results([bad])
    shutil.copy(bad, tmp_path / "y.json")
    with pytest.raises(JRTError, match="does not exist"):
        load_results([tmp_path / "missing.json"])


def _doc(model, scores):
    results = []
    for task, (default, jrt) in scores.items():
        for repeat, value in ((1, default), (2, jrt)):
            metrics = {"contains": value, "exact_match": 0.0, "f1": 0.0}
            form = "default" if repeat == 1 else "jrt"
            results.append(
                {"task": task, "form": form, "repeat": repeat, "n": 10, "skipped": 0, "metrics": metrics}
            )
    return {"format": "jrt-eval-results/1", "model": model, "results": results}


def test_report_averages_over_the_tasks_every_model_ran():
    from jrt_prompt.report import table_rows

    a = _doc("a", {"swde": (10.0, 30.0), "fda": (20.0, 20.0), "kv-docs": (90.0, 95.0)})
    b = _doc("b", {"swde": (50.0, 60.0), "fda": (40.0, 70.0)})
    averages = {r["model"]: r for r in table_rows([a, b]) if r["task"] == "average"}
    assert averages["a"]["tasks"] == 2 and averages["a"]["default"] == 15.0 and averages["a"]["delta"] == 10.0
    assert averages["b"]["jrt"] == 65.0 and averages["b"]["delta"] == 20.0
    alone = [r for r in table_rows([a]) if r["task"] == "average"]
    assert alone[0]["tasks"] == 3


def test_reference_mode_uses_the_harness_generator(tmp_path, models):
    from jrt_prompt import load_model
    from jrt_prompt.generation.harness import harness_generate

    loaded = load_model(models["llama"], device="cpu")
    config = EvalConfig(model="unused", tasks=("drop",), repeats=(2,), data={"drop": FIXTURES / "drop.jsonl"},
                        max_new_tokens=5, batch_size=2, mode="reference", save_prompts=True)  # fmt: skip
    (examples,) = evaluate(config, loaded)["samples"].values()
    prompts = [e["prompt"] for e in examples]
    assert prompts == [pair[1] for pair in EXPECTED["drop"]]
    expected = harness_generate(loaded.model, loaded.tokenizer, prompts, batch_size=2, max_new_tokens=5)
    assert [e["prediction"] for e in examples] == expected
    assert all(e["finish_reason"] == "reference" for e in examples)
    with pytest.raises(ValueError, match="mode 'fast' is unknown"):
        evaluate(
            EvalConfig(model="demo", tasks=("drop",), mode="fast", data={"drop": FIXTURES / "drop.jsonl"})
        )


DEMO = Path(__file__).resolve().parent.parent / "jrt_prompt" / "demo"


@pytest.mark.skipif(
    not (DEMO / "model.safetensors").is_file(), reason="the demo model is not in this checkout"
)
def test_demo_model_recalls_more_kv_docs_when_it_reads_twice(tmp_path):
    from jrt_prompt import load_model

    config = EvalConfig(model="unused", tasks=("kv-docs",), repeats=(1, 2), limit=64, batch_size=8)
    doc = evaluate(config, load_model(DEMO, device="cpu"))
    by_repeat = {}
    for entry in doc["results"].values():
        assert entry["n"] == 64 and entry["source"].endswith("kv_docs_heldout.jsonl")
        by_repeat[entry["repeat"]] = 100 * entry["contains,none"]
    # measured: 56.3 (one read) and 67.2 (JRT) on these 64 rows; chance is about 1 in 11
    assert by_repeat[1] >= 40.0 and by_repeat[2] >= by_repeat[1] + 5.0, by_repeat
