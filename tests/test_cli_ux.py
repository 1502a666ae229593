"""What a user of the command line and of the Python API meets: input choices, output streams,
machine-readable output, option checks before work, results files, import cost and layout."""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from jrt_cli._common import Progress, reports_errors
from jrt_cli.main import app
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "jrt_prompt" / "demo"
RECORD = ROOT / "examples" / "record.txt"
runner = CliRunner()

needs_demo = pytest.mark.skipif(not (DEMO / "model.safetensors").is_file(), reason="no demo model here")


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    assert not result.output.startswith("\n")
    return lines[0]


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        cwd=ROOT,
    )


# --- item 1: the context is a file, standard input, or --text; never a path taken as text -------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-c", "nope"], "context file nope does not exist"),
        (["-c", "report.pdf"], "context file report.pdf does not exist"),
        (["-c", "jrt_prompt"], "context file jrt_prompt is a directory"),
        ([], "pass the context once"),
    ],
)
def test_a_missing_context_file_is_an_error_not_the_context(args, message, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["run", *args, "-q", "What is the garden?"])
    assert result.exit_code == 2 and message in _one_error_line(result)


def test_binary_context_file_is_refused(tmp_path):
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(b"%PDF-1.7\n\xff\xfe\x00\x81binary")
    result = runner.invoke(app, ["run", "-c", str(pdf), "-q", "q"])
    assert result.exit_code == 2 and "is not UTF-8 text" in _one_error_line(result)


@needs_demo
def test_context_from_stdin_and_answer_alone_on_stdout():
    result = runner.invoke(app, ["run", "-c", "-", "-q", "What is the garden?"], input=RECORD.read_text())
    assert result.exit_code == 0, result.output
    assert result.stdout == "guava\n"  # metadata goes to stderr: answer=$(jrt run ...) is the answer
    assert "prompt tokens" in result.stderr and "guava" not in result.stderr


@needs_demo
def test_readme_setup_command_prints_guava_and_json_is_valid():
    result = runner.invoke(app, ["run", "--context", str(RECORD), "--question", "What is the garden?"])
    assert result.exit_code == 0 and result.stdout.strip() == "guava"
    result = runner.invoke(app, ["run", "--context", str(RECORD), "-q", "What is the garden?", "--json"])
    doc = json.loads(result.stdout)
    assert doc["answer"] == "guava" and doc["repeat"] == 2 and doc["question_first"] is True
    assert doc["raw_text"].strip() == "guava" and doc["warnings"] == []
    result = runner.invoke(app, ["run", "--text", RECORD.read_text(), "-q", "What is the garden?", "-k", "1"])
    assert result.exit_code == 0 and result.stdout.strip() != "guava"  # one read: the paper's failure


@needs_demo
def test_run_warns_when_the_prompt_is_longer_than_training():
    long_text = RECORD.read_text() * 12
    result = runner.invoke(app, ["run", "--text", long_text, "-q", "What is the garden?", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (
        len(doc["warnings"]) == 1 and "longer than the 497 tokens demo was trained on" in doc["warnings"][0]
    )
    assert "warning:" in result.stderr


# --- item 2, 10, 11: options are checked before any work ------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["eval", "--model", "nowhere", "--tasks", "kv-docs", "--metric", "acc"],
            "--metric 'acc' is unknown",
        ),
        (["eval", "--model", "nowhere", "--tasks", "kv-docs", "--limit", "0"], "limit=0 is invalid"),
        (["eval", "--model", "nowhere", "--tasks", "kv-docs,swde_twice"], "pick the form with --repeat 2"),
        (
            ["eval", "--model", "nowhere", "--tasks", "kv-docs", "--repeat", "1,0"],
            "--repeat values must be >= 1",
        ),
        (
            ["eval", "--model", "nowhere", "--tasks", "kv-docs", "--repeat", "1,x"],
            "--repeat takes whole numbers",
        ),
        (["eval", "--model", "nowhere"], "pass at least one task"),
        (["models", "--prompt-tokens", "-5"], "prompt_tokens=-5 is invalid"),
        (["score", "in.jsonl", "--out", "o.jsonl", "--limit", "0"], "--limit 0 is invalid"),
        (["report", "x.json", "--metric", "acc"], "--metric 'acc' is unknown"),
    ],
)
def test_bad_options_fail_in_one_line_before_any_work(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in _one_error_line(result)


def test_comma_lists_and_repeated_options_alike(tmp_path):
    from jrt_cli._common import split_ints, split_list

    assert split_list(["swde,fda", "drop"]) == ["swde", "fda", "drop"]
    assert split_ints(["1,2", "3"], "--repeat") == [1, 2, 3]
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["eval", "--model", str(DEMO), "--tasks", "kv-docs,kv-docs", "--repeat", "1,2",
                                 "--limit", "2", "--out", str(out), "--device", "cpu", "--max-new-tokens", "4"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert list(json.loads(out.read_text())["results"]) == ["kv_docs", "kv_docs_twice"]


# --- item 3, 8: one results file per run, samples beside it, never overwritten ------------------------


@needs_demo
def test_eval_writes_one_file_per_run_and_never_overwrites(tmp_path):
    args = [
        "eval",
        "--model",
        "demo",
        "--task",
        "kv-docs",
        "--limit",
        "3",
        "--device",
        "cpu",
        "--max-new-tokens",
        "4",
    ]
    first = runner.invoke(app, [*args, "--output-path", str(tmp_path / "runs")])
    second = runner.invoke(app, [*args, "--output-path", str(tmp_path / "runs")])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    files = sorted((tmp_path / "runs" / "demo").glob("results_*.json"))
    assert len(files) == 2
    for path in files:
        doc = json.loads(path.read_text())
        assert doc["format"] == "jrt-eval-results/2" and set(doc["results"]) == {"kv_docs", "kv_docs_twice"}
        for name, entry in doc["results"].items():
            assert 0.0 <= entry["contains,none"] <= 1.0 and entry["contains_stderr,none"] is not None
            samples = path.parent / doc["samples"][name]
            assert len(samples.read_text().splitlines()) == 3
        assert doc["versions"]["jrt-prompt"] and doc["config"]["limit"] == 3
    # an explicit .json file is never replaced: the run stops before any work
    target = tmp_path / "mine.json"
    target.write_text("keep")
    result = runner.invoke(app, [*args, "--out", str(target)])
    assert result.exit_code == 2 and "never overwritten" in _one_error_line(result)
    assert target.read_text() == "keep"


def test_results_path_rules(tmp_path):
    from jrt_prompt.evaluation import results_path, samples_path

    path = results_path(tmp_path, "/models/tiny mamba", "2026-01-02T03-04-05")
    assert path == tmp_path / "tiny__mamba" / "results_2026-01-02T03-04-05.json"
    path.parent.mkdir(parents=True)
    path.write_text("{}")
    assert results_path(tmp_path, "/models/tiny mamba", "2026-01-02T03-04-05").name.endswith("-2.json")
    assert samples_path(path, "based_swde").name == "samples_based_swde_2026-01-02T03-04-05.jsonl"
    assert samples_path(tmp_path / "gla.json", "based_fda").name == "gla_samples_based_fda.jsonl"


def test_score_rows_name_the_batch_time_and_old_rows_stay_readable():
    from jrt_prompt.scoring import batch_seconds

    assert batch_seconds({"batch_seconds": 0.5}) == 0.5
    assert batch_seconds({"latency_s": 0.25}) == 0.25  # rows written by earlier versions
    assert batch_seconds({}) is None


def test_progress_off_a_terminal_prints_plain_lines():
    stream = io.StringIO()
    display = Progress("scoring", interval=0.0, stream=stream, tty=False)
    display.start(3)
    display.advance(1)
    display.advance(2)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "scoring: 0/3 rows" and lines[-1].startswith("scoring: 3/3 rows, ")
    assert "\x1b" not in stream.getvalue()  # no terminal control codes in logs


# --- item 9: every prompt form gets its own column, colour and value ------------------------------


def _doc(model, values, n=10):
    results = {}
    for task, per_repeat in values.items():
        for repeat, value in per_repeat.items():
            form = {1: "default", 2: "jrt"}.get(repeat, f"jrt-k{repeat}")
            results[f"{task}_{form}"] = {
                "task": task, "form": form, "repeat": repeat, "n": n, "skipped": 0,
                "contains,none": value, "contains_stderr,none": 0.05,
                "exact_match,none": 0.0, "exact_match_stderr,none": 0.0, "f1,none": 0.0, "f1_stderr,none": 0.0,
            }  # fmt: skip
    return {"format": "jrt-eval-results/2", "model": model, "results": results}


def test_report_shows_every_repeat_count_and_zero_apart_from_missing(tmp_path):
    from jrt_prompt.report import bar_chart, markdown_table

    docs = [_doc("a", {"swde": {1: 0.0, 2: 0.5, 3: 0.75}, "fda": {1: 0.2, 2: 0.3}})]
    text = markdown_table(docs)
    assert (
        text.splitlines()[0]
        == "| model | task | n | default (contains) | JRT (contains) | JRT k=3 (contains) | Δ |"
    )
    assert "| a | swde | 10 | 0.0 ± 5.0 | 50.0 ± 5.0 | 75.0 ± 5.0 | +50.0 |" in text
    assert "| a | fda | 10 | 20.0 ± 5.0 | 30.0 ± 5.0 | – | +10.0 |" in text
    png = bar_chart(docs, tmp_path / "c.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_report_reads_results_of_the_earlier_format():
    from jrt_prompt.report import table_rows

    old = {"format": "jrt-eval-results/1", "model": "m", "results": [
        {"task": "swde", "paper_task": "based_swde", "form": "default", "repeat": 1, "n": 4, "skipped": 0,
         "metrics": {"contains": 25.0, "exact_match": 0.0, "f1": 0.0}},
    ]}  # fmt: skip
    (row,) = table_rows([old])
    assert row["default"] == 25.0 and row["default_stderr"] is None


# --- item 4: the Python API agrees with the command line ----------------------------------------


def test_api_defaults_match_the_command_line():
    from jrt_prompt import JRTArgumentError, JRTError, JRTPrompt

    assert JRTPrompt(repeat=1).render("C", "Q") == "C\nQ"
    assert JRTPrompt().render("C", "Q") == "Q\nC\nC\nQ"
    assert JRTPrompt(repeat=1, question_first=True).render("C", "Q") == "Q\nC\nQ"
    with pytest.raises(ValueError, match="repeat=0"):
        JRTPrompt(repeat=0)
    assert issubclass(JRTArgumentError, ValueError) and issubclass(JRTArgumentError, JRTError)


@needs_demo
def test_import_jrt_prompt_is_light_and_registers_the_model_type():
    code = (
        "import sys, jrt_prompt\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(DEMO)!r})\n"
        f"t = AutoTokenizer.from_pretrained({str(DEMO)!r})\n"
        "ids = t('Q\\nC\\nC\\nQ', return_tensors='pt').input_ids\n"
        "m.generate(ids, max_new_tokens=3, do_sample=False)\n"
        "print(type(m).__name__)\n"
    )
    result = _python(code, TRANSFORMERS_VERBOSITY="warning")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "JRTForCausalLM"
    assert "deprecated" not in result.stderr  # the project's own model uses transformers' current names


def test_registration_when_transformers_came_first():
    result = _python(
        "import transformers.models.auto.modeling_auto\nfrom transformers import AutoConfig\n"
        "import jrt_prompt\n"
        "print(AutoConfig.for_model('jrt_hybrid').__class__.__name__)"
    )
    assert result.returncode == 0 and result.stdout.strip() == "JRTConfig", result.stderr


# --- item 6, 11: fast help, version, flags -----------------------------------------------------------


def test_help_version_and_usage_errors_do_not_import_torch():
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom jrt_cli.main import app\n"
        "r = CliRunner()\n"
        "codes = [r.invoke(app, a).exit_code for a in (['--help'], ['--version'], ['run', '--help'],"
        " ['eval', '--bogus'], ['eval', '--tasks', 'x', '--metric', 'acc'])]\n"
        "print(codes, 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0, 0, 0, 2, 2] False False"


def test_version_and_flags_in_help():
    from jrt_prompt import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"jrt-prompt {__version__}"
    help_text = runner.invoke(app, ["run", "--help"], terminal_width=200).stdout
    flag_lines = [line for line in help_text.splitlines() if "--show-prompt" in line or "--json" in line]
    assert flag_lines and not any("<bool>" in line for line in flag_lines)
    for command in (["synth", "train"], ["synth", "eval"]):
        text = runner.invoke(app, [*command, "--help"], terminal_width=200).stdout
        assert "[default: auto]" in text


def test_interrupt_says_how_to_resume():
    tiny = typer.Typer()

    @tiny.command()
    @reports_errors(resumable=True)
    def job() -> None:
        raise KeyboardInterrupt

    result = runner.invoke(tiny, [])
    assert result.exit_code == 130 and "rerun the same command to resume" in result.stderr


# --- item 10, 11: model search ---------------------------------------------------------------------


def test_unreachable_hub_is_one_short_attempt(monkeypatch, tmp_path):
    from jrt_prompt import hub
    from jrt_prompt.errors import ModelNotFoundError
    from jrt_prompt.models import loading

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("JRT_MODELS_DIR", str(tmp_path))
    monkeypatch.setattr(hub, "_probe", {})
    with pytest.raises(ModelNotFoundError) as caught:
        loading.locate("mamba-130m")
    message = str(caught.value)
    assert "hub unreachable" in message and len(message.splitlines()) == 1
    searched = message.split("searched ", 1)[1].split("; ")
    assert len(searched) == len(set(searched))  # no path listed twice


def test_unreachable_hub_dataset_reads_the_cache_only(monkeypatch):
    import time

    import datasets
    import huggingface_hub

    from jrt_prompt import hub
    from jrt_prompt.errors import JRTError
    from jrt_prompt.tasks import get_task
    from jrt_prompt.tasks.data import load_hub_rows

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # as on a machine without HF_*_OFFLINE
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_probe", {hub.endpoint(): False})
    started = time.perf_counter()
    with pytest.raises(JRTError, match="not cached, and the hub is off or unreachable"):
        load_hub_rows(get_task("swde"))
    assert time.perf_counter() - started < 20  # no client retries (they take 25 s and more)


def test_gpu_only_model_says_cuda_and_fla():
    result = runner.invoke(app, ["run", "-m", "gla-1.3b", "-t", "text", "-q", "q", "--device", "cpu"])
    line = _one_error_line(result)
    assert result.exit_code == 2 and "CUDA GPU" in line and "flash-linear-attention" in line


# --- item 12, 14: layout ------------------------------------------------------------------------------


def test_configs_ship_from_the_top_level_folder():
    import tomllib
    from importlib import resources

    from jrt_prompt.models.registry import roster_path

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["setuptools"]["package-dir"]["jrt_prompt.configs"] == "configs"
    assert "*.yaml" in config["tool"]["setuptools"]["package-data"]["jrt_prompt.configs"]
    assert (resources.files("jrt_prompt.configs") / "models.yaml").is_file()
    assert roster_path().resolve() == (ROOT / "configs" / "models.yaml").resolve()
    assert not (ROOT / "jrt_prompt" / "configs").exists()


def _module_imports(package_dir: Path, package: str) -> dict[str, set[str]]:
    """Module -> modules of the same package it imports (anywhere, function bodies included)."""
    graph: dict[str, set[str]] = {}
    for path in package_dir.glob("*.py"):
        name = f"{package}.{path.stem}" if path.stem != "__init__" else package
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:  # within the package (the folders tested have no subpackages)
                    names = (
                        [f"{package}.{node.module}"]
                        if node.module
                        else [f"{package}.{a.name}" for a in node.names]
                    )
                else:
                    names = [node.module or ""]
                deps |= {n for n in names if n.startswith(package)}
        graph[name] = deps - {name}
    return graph


@pytest.mark.parametrize(
    ("folder", "package"), [("cli", "jrt_cli"), ("jrt_prompt/tasks", "jrt_prompt.tasks")]
)
def test_no_import_circles(folder, package):
    graph = _module_imports(ROOT / folder, package)
    for module in graph:
        seen, stack = set(), list(graph[module])
        while stack:
            dep = stack.pop()
            assert dep != module, f"import circle through {module}"
            if dep not in seen:
                seen.add(dep)
                stack.extend(graph.get(dep, ()))
    if package == "jrt_cli":  # the commands know nothing of the app: only main registers them
        assert all("jrt_cli.main" not in deps for name, deps in graph.items() if name != "jrt_cli.__main__")


@needs_demo
def test_score_says_at_the_start_that_it_repaired_a_torn_line(tmp_path):
    rows = [{"id": i, "context": RECORD.read_text(), "question": "What is the garden?"} for i in range(2)]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    args = ["score", str(data), "--out", str(out), "--device", "cpu", "--max-new-tokens", "4"]
    assert runner.invoke(app, [*args, "--limit", "1"]).exit_code == 0
    with out.open("ab") as f:
        f.write(b'{"line": 2, "id": 1, "sta')  # the tail a kill -9 leaves
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    repaired = next(i for i, line in enumerate(lines) if "repaired 1 torn line" in line)
    progress = next(i for i, line in enumerate(lines) if line.startswith("scoring: 1/1 rows,"))
    assert lines[repaired].startswith("warning: ") and repaired < progress
    summary = json.loads(result.stdout)
    assert summary["torn_lines_repaired"] == 1 and summary["environment"]["versions"]["torch"]
    rows_out = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["batch_seconds"] > 0 and "latency_s" not in r for r in rows_out)


def test_sigterm_stops_with_the_resume_hint(tmp_path):
    import signal

    script = tmp_path / "job.py"
    script.write_text(
        "import sys, time, typer\nfrom jrt_cli._common import reports_errors\napp = typer.Typer()\n"
        "@app.command()\n@reports_errors(resumable=True)\ndef job() -> None:\n"
        "    print('started', flush=True)\n    time.sleep(60)\napp()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip() == "terminated: rerun the same command to resume"
