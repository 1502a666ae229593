import pytest
from jrt_cli.main import app
from tiny_models import write_tiny_mamba
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_tiny_mamba(tmp_path_factory.mktemp("models") / "tiny-mamba")


def test_run_end_to_end(tiny_model, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("The lease was signed by Alice Moreau in Lyon.", encoding="utf-8")
    result = runner.invoke(
        app,
        [
            "run",
            "--model",
            str(tiny_model),
            "--context",
            str(doc),
            "--question",
            "Who signed the lease?",
            "--repeat",
            "2",
            "--show-prompt",
            "--max-new-tokens",
            "5",
            "--device",
            "cpu",
            "--dtype",
            "float32",
        ],
    )
    assert result.exit_code == 0, result.output
    prompt = "Who signed the lease?\nThe lease was signed by Alice Moreau in Lyon.\n" * 1
    assert prompt + "The lease was signed by Alice Moreau in Lyon.\nWho signed the lease?" in result.output
    assert "repeat=2, question_first=True" in result.output


def test_run_plain_prompt(tiny_model):
    result = runner.invoke(
        app,
        [
            "run",
            "-m",
            str(tiny_model),
            "-t",
            "Ctx text.",
            "-q",
            "Q?",
            "-k",
            "1",
            "--show-prompt",
            "--max-new-tokens",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Ctx text.\nQ?" in result.output and "question_first=False" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "no-such-model", "-t", "text", "-q", "q"], "unknown model 'no-such-model'"),
        (["-c", "missing/doc.txt", "-q", "q"], "context file missing/doc.txt does not exist"),
        (["-c", "nope", "-q", "q"], "context file nope does not exist"),
        (["-c", "report.pdf", "-q", "q"], "context file report.pdf does not exist"),
        (["-c", ".", "-q", "q"], "context file . is a directory"),
        (["-q", "q"], "pass the context once"),
        (["-c", "x.txt", "-t", "text", "-q", "q"], "pass the context once"),
        (["-t", "text", "-q", "q", "--repeat", "0"], "repeat=0 is invalid"),
        (["-t", "text", "-q", "   "], "question is empty"),
        (["-t", "text", "-q", "q", "--dtype", "float8"], "dtype 'float8' is unknown"),
        (["-t", "text", "-q", "q", "--max-new-tokens", "0"], "max_new_tokens=0 is invalid"),
    ],
)
def test_run_errors_are_one_line(tiny_model, args, message):
    if "-m" not in args:
        args = ["-m", str(tiny_model), *args]
    result = runner.invoke(app, ["run", *args])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_models_lists_the_roster():
    result = runner.invoke(app, ["models", "--prompt-tokens", "1024"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in (
        "mamba-1.4b",
        "mamba2-2.7b",
        "gla-1.3b",
        "based-360m",
        "jrt-rnn-1.3b",
        "attn-1.3b",
        "rwkv-4-169m",
    ):
        assert name in result.output
    # attn-1.3b: 241920 bytes/token x 1024 tokens = 236.2 MiB of KV cache
    assert "236.2 MiB" in result.output


def test_jrt_rnn_reads_the_prompt_once_and_runs_in_reference_mode(tmp_path, monkeypatch):
    from test_hazy_checkpoints import hybrid_lookalike

    hybrid_lookalike(tmp_path / "jrt-rnn-360m", "jrt")
    monkeypatch.setenv("JRT_MODELS_DIR", str(tmp_path))
    base = [
        "run",
        "-m",
        "jrt-rnn-360m",
        "-t",
        "The key is 42.",
        "-q",
        "Key?",
        "--show-prompt",
        "--max-new-tokens",
        "4",
    ]
    result = runner.invoke(app, base)
    assert result.exit_code == 0, result.output
    assert "The key is 42.\nKey?" in result.output and "repeat=1, question_first=False" in result.output
    assert "(jrt-rnn)" in result.output
    # --repeat still applies when asked for explicitly.
    result = runner.invoke(app, [*base, "--repeat", "2"])
    assert result.exit_code == 0 and "Key?\nThe key is 42.\nThe key is 42.\nKey?" in result.output
    result = runner.invoke(app, [*base, "--mode", "reference"])
    assert result.exit_code == 0, result.output
    assert "4 answer tokens" in result.output
    result = runner.invoke(app, [*base, "--mode", "paper"])
    assert result.exit_code == 2 and "mode 'paper' is unknown" in result.output
