"""Other hostile inputs: a multi-megabyte context for `jrt run`, non-UTF-8 bytes in `jrt eval --data`."""

import json
import time

import pytest
from typer.testing import CliRunner

from jrt_prompt import prompts
from jrt_prompt.errors import JRTError
from jrt_prompt.prompts import DEFAULT_MAX_PROMPT_TOKENS, JRTPrompt, count_tokens_upto, prompt_token_cap
from jrt_prompt.run import run_prompt
from jrt_prompt.tasks.data import load_local_rows
from jrt_prompt.tokenization import build_byte_tokenizer


def test_the_default_cap_comes_from_the_config_or_the_documented_default():
    assert prompt_token_cap(None, 48) == DEFAULT_MAX_PROMPT_TOKENS
    assert prompt_token_cap(2048, 48) == 2000
    assert prompt_token_cap(2048, 48, 100) == 100 and prompt_token_cap(None, 48, 7) == 7
    with pytest.raises(JRTError, match="max_prompt_tokens=-1 is invalid"):
        prompt_token_cap(None, 48, -1)


def test_counting_stops_early_on_a_text_far_over_the_cap():
    seen = []

    def count(text):
        seen.append(len(text))
        return len(text.encode("utf-8"))

    assert count_tokens_upto(count, "x" * 100, 10) == 100  # short texts: the exact count
    assert count_tokens_upto(count, "y" * 5_000_000, 1000) is None
    assert max(seen) <= prompts.PROBE_CHARS  # the 5 MB text was never tokenized whole
    assert count_tokens_upto(count, "z" * 200_000, 10**6) == 200_000


def test_fit_cuts_a_5_mb_context_without_tokenizing_it_whole():
    tok = build_byte_tokenizer()
    context = "The garden is guava. " + "filler text here. " * 290_000
    started = time.perf_counter()
    fitted = JRTPrompt(repeat=2).fit(context, "What is the garden?", tok, 300)
    assert time.perf_counter() - started < 30
    assert fitted.prompt_tokens <= 300 and fitted.context.startswith("The garden is guava.")
    assert fitted.original_context_tokens == len(context.encode())  # counted in bounded pieces
    end = JRTPrompt(repeat=1).fit(context + " The end.", "Last words?", tok, 100)
    assert end.prompt_tokens <= 100


def test_jrt_run_with_a_5_mb_context_applies_the_default_cap(monkeypatch):
    # the demo model declares no position limit: the documented default caps the prompt
    monkeypatch.setattr(prompts, "DEFAULT_MAX_PROMPT_TOKENS", 600)
    context = "The garden is guava. " + "filler text here. " * 290_000
    result = run_prompt(context, "What is the garden?", device="cpu", max_new_tokens=2)
    assert result.answer.prompt_tokens <= 600 and result.fitted.truncated
    assert result.fitted.cut_tokens > 5_000_000


def test_eval_data_with_non_utf8_bytes_is_a_one_line_error(tmp_path):
    from jrt_cli.main import app

    bad = tmp_path / "kv-docs.jsonl"
    good = json.dumps({"context": "k1: v1", "question": "k1?", "answers": ["v1"]})
    bad.write_bytes(good.encode() + b"\n" + b'{"context": "caf\xe9", "question": "q?", "answers": ["a"]}\n')
    with pytest.raises(JRTError, match=r"not UTF-8 text: byte 0xe9 on line 2 \(byte \d+ of the file\)"):
        load_local_rows(bad)
    result = CliRunner().invoke(
        app, ["eval", "--model", "demo", "--task", "squad", "--data", f"squad={bad}", "--device", "cpu"]
    )
    assert result.exit_code == 2, result.output
    assert "not UTF-8 text" in result.output and "Traceback" not in result.output
