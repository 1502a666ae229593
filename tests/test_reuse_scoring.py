"""`jrt score --reuse-state`: rows sharing a context read it once; rows equal those read whole."""

import json

import pytest
from tiny_models import write_tiny_llama, write_tiny_mamba
from typer.testing import CliRunner

from jrt_prompt import load_model
from jrt_prompt.generation import StateCache, read_document
from jrt_prompt.generation import engine as engine_module
from jrt_prompt.scoring import score_file

DOCS = [
    "Alice signed the lease in Lyon. The key is 42.",
    "Bob keeps the garden; the code is 7; Eve has the car.",
    "A third document, asked only once.",
]
QUESTIONS = ["Who signed?", "What is the key?", "Who keeps the garden?", "The code?", "Car?"]
TIMING = ("batch_seconds", "row_seconds")


def _input(path, question_first=False):
    rows = []
    for i, q in enumerate(QUESTIONS * 2):
        rows.append({"id": f"r{i}", "context": DOCS[i % 2], "question": q, "answers": ["42"]})
    rows.append({"id": "single", "context": DOCS[2], "question": "What is it?"})
    rows.append({"id": "qf", "context": DOCS[0], "question": "Who signed?", "question_first": True})
    rows.append({"id": "bad", "question": "no context"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(path):
    return [
        {k: v for k, v in json.loads(line).items() if k not in TIMING}
        for line in path.read_text().splitlines()
    ]


class _CountPrefills:
    """Rows the decode engine prefills (every read of a prompt or a document)."""

    def __init__(self, monkeypatch):
        self.rows = 0
        original = engine_module.DecodeEngine._prefill

        def counted(engine, ids_rows):
            self.rows += len(ids_rows)
            return original(engine, ids_rows)

        monkeypatch.setattr(engine_module.DecodeEngine, "_prefill", counted)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(write_tiny_mamba(tmp_path_factory.mktemp("m") / "tiny-mamba"), device="cpu")


@pytest.mark.parametrize("model", ["tiny", "demo"])
def test_reuse_gives_the_same_rows_and_reads_each_shared_document_once(tmp_path, tiny, model, monkeypatch):
    loaded = tiny if model == "tiny" else load_model("demo", device="cpu")
    src = _input(tmp_path / "in.jsonl")
    counter = _CountPrefills(monkeypatch)
    off = score_file(
        src,
        tmp_path / "off.jsonl",
        model=loaded,
        repeat=2,
        question_first=False,
        reuse_state="off",
        max_new_tokens=8,
        batch_size=4,
    )
    prefills_off = counter.rows
    counter.rows = 0
    on = score_file(
        src,
        tmp_path / "on.jsonl",
        model=loaded,
        repeat=2,
        question_first=False,
        reuse_state="auto",
        max_new_tokens=8,
        batch_size=4,
    )
    assert _rows(tmp_path / "on.jsonl") == _rows(tmp_path / "off.jsonl")
    assert (on.ok, on.errors) == (off.ok, off.errors) == (12, 1)
    assert prefills_off == 12
    # Two shared documents read once each; the single-question row and the question-first row whole.
    assert counter.rows == 2 + 2
    assert on.settings["shared_documents_read"] == 2 and off.settings["shared_documents_read"] == 0


def test_state_cache_keeps_documents_across_runs(tmp_path, tiny, monkeypatch):
    src = _input(tmp_path / "in.jsonl")
    cache = tmp_path / "states"
    kwargs = dict(model=tiny, repeat=2, question_first=False, max_new_tokens=8, state_cache=cache)
    first = score_file(src, tmp_path / "a.jsonl", **kwargs)
    assert first.settings["shared_documents_read"] == 2 and len(list(cache.glob("*.safetensors"))) == 2
    counter = _CountPrefills(monkeypatch)
    second = score_file(src, tmp_path / "b.jsonl", **kwargs)
    assert second.settings["shared_documents_read"] == 0 and counter.rows == 2  # the two unshared rows
    assert _rows(tmp_path / "a.jsonl") == _rows(tmp_path / "b.jsonl")


def test_state_cache_evicts_the_least_recently_used(tmp_path, tiny):
    import os
    import time

    from jrt_prompt import JRTPrompt

    prompt = JRTPrompt.context_first(2)
    states = [read_document(tiny, doc) for doc in DOCS]
    size = len(states[0].save(tmp_path / "probe.safetensors").read_bytes())
    cache = StateCache(tmp_path / "c", max_bytes=2 * size + size // 2)  # room for two states
    cache.put(states[0], DOCS[0])
    cache.put(states[1], DOCS[1])
    old = time.time() - 100
    os.utime(cache.files()[0], (old, old))
    os.utime(cache.files()[1], (old, old))
    assert cache.get(tiny, prompt, DOCS[0]) is not None  # touched: now the most recent
    cache.put(states[2], DOCS[2])
    assert cache.size() <= cache.max_bytes and len(cache.files()) == 2
    assert cache.get(tiny, prompt, DOCS[1]) is None  # the least recently used went
    assert cache.get(tiny, prompt, DOCS[0]) is not None and cache.get(tiny, prompt, DOCS[2]) is not None
    # A state kept for one layout is not found for another.
    assert cache.get(tiny, JRTPrompt.context_first(1), DOCS[0]) is None


def test_transformers_reuse_their_prefix_kv_cache_in_scoring(tmp_path):
    loaded = load_model(write_tiny_llama(tmp_path / "llama"), device="cpu")
    src = _input(tmp_path / "in.jsonl")
    kwargs = dict(model=loaded, repeat=2, question_first=False, max_new_tokens=6)
    score_file(src, tmp_path / "off.jsonl", reuse_state="off", **kwargs)
    on = score_file(src, tmp_path / "on.jsonl", reuse_state="auto", **kwargs)
    assert _rows(tmp_path / "on.jsonl") == _rows(tmp_path / "off.jsonl")
    assert on.settings["shared_documents_read"] == 2


def test_cli_reuse_flags(tmp_path):
    from cli.main import app

    src = _input(tmp_path / "in.jsonl")
    runner = CliRunner()
    args = [
        "score",
        str(src),
        "--model",
        "demo",
        "--no-question-first",
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
    ]
    result = runner.invoke(
        app,
        [
            *args,
            "--out",
            str(tmp_path / "a.jsonl"),
            "--state-cache",
            str(tmp_path / "s"),
            "--state-cache-mb",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "s").glob("*.safetensors"))) == 2
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "b.jsonl"), "--reuse-state", "sometimes"])
    assert result.exit_code != 0 and "--reuse-state" in result.output


def test_a_model_whose_cache_cannot_be_copied_is_scored_whole(tmp_path, tiny, monkeypatch):
    from jrt_prompt.errors import ReuseUnsupported
    from jrt_prompt.generation import reuse

    def refuse(*args, **kwargs):
        raise ReuseUnsupported("this cache cannot be copied")

    src = _input(tmp_path / "in.jsonl")
    kwargs = dict(model=tiny, repeat=2, question_first=False, max_new_tokens=8)
    score_file(src, tmp_path / "off.jsonl", reuse_state="off", **kwargs)
    monkeypatch.setattr(reuse, "read_documents_cached", refuse)
    summary = score_file(src, tmp_path / "on.jsonl", reuse_state="auto", **kwargs)
    assert _rows(tmp_path / "on.jsonl") == _rows(tmp_path / "off.jsonl")
    assert summary.settings["shared_documents_read"] == 0 and summary.ok == 12
