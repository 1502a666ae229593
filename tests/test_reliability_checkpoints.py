"""Malformed and malicious checkpoints through every loading path: one-line errors, no code run,
nothing read from outside the directory, bounded memory and time."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_hazy_checkpoints import hybrid_lookalike
from tiny_models import (
    write_tiny_llama,
    write_tiny_mamba,
    write_tiny_mamba2,
    write_tiny_mamba2_original,
    write_tiny_mamba_original,
    write_tiny_rwkv,
)

from jrt_prompt import load_model
from jrt_prompt.errors import JRTError
from jrt_prompt.models.checkpoint import read_config, read_state_dict
from jrt_prompt.models.loading import get_adapter, package_dir


def _demo(path):
    shutil.copytree(package_dir("demo"), path)
    return path


# name: (writer, adapter that loads it, how it loads: from_pretrained or the project's reader)
WRITERS = {
    "mamba-hf": (write_tiny_mamba, "mamba"),
    "mamba2-hf": (write_tiny_mamba2, "mamba2"),
    "rwkv": (write_tiny_rwkv, "rwkv"),
    "llama": (write_tiny_llama, "hf"),
    "jrt-hybrid": (_demo, "hazy_gpt"),
    "mamba-original": (lambda p: write_tiny_mamba_original(p)[0], "mamba"),
    "mamba2-original": (lambda p: write_tiny_mamba2_original(p)[0], "mamba2"),
    "based-hazy": (lambda p: hybrid_lookalike(p, "based")[0], "hazy_gpt"),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    return {name: writer(root / name) for name, (writer, _) in WRITERS.items()}


def _copy(written, name, dest: Path) -> Path:
    shutil.copytree(written[name], dest, symlinks=True)
    return dest


def _state(path: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(path)


def as_safetensors(path: Path) -> Path:
    """The same weights as model.safetensors (the file every loader prefers)."""
    state = {k: v.contiguous().clone() for k, v in _state(path).items()}
    for name in ("pytorch_model.bin", "model.safetensors"):
        (path / name).unlink(missing_ok=True)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path / "model.safetensors"


def as_bin(path: Path) -> Path:
    state = _state(path)
    (path / "model.safetensors").unlink(missing_ok=True)
    torch.save(state, path / "pytorch_model.bin")
    return path / "pytorch_model.bin"


def truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def garble_header(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[:8] + b"{not json" + data[17:])


def giant_header(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes((2**62).to_bytes(8, "little") + data[8:])


class Payload:
    """What an attacker pickles: unpickling it would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_bin(path: Path, marker: Path) -> None:
    (path / "model.safetensors").unlink(missing_ok=True)
    state = dict(_state(path)) if (path / "pytorch_model.bin").exists() else {}
    state["backbone.payload"] = Payload(str(marker))
    torch.save(state, path / "pytorch_model.bin")


def refused(path: Path, match: str, adapter: str | None = None) -> str:
    """The one-line JRTError load_model gives; also through the adapter's own load when named."""
    with pytest.raises(JRTError) as info:
        load_model(path, device="cpu")
    message = str(info.value)
    assert "\n" not in message and len(message) < 500 and match in message, message
    if adapter is not None:
        with pytest.raises(JRTError, match=match):
            get_adapter(adapter).load(path, read_config(path), torch.device("cpu"), None)
    return message


@pytest.mark.parametrize("name", sorted(WRITERS))
@pytest.mark.parametrize("damage", [truncate, garble_header, giant_header])
def test_corrupted_safetensors_through_every_loader(tmp_path, written, name, damage):
    path = _copy(written, name, tmp_path / name)
    file = as_safetensors(path)
    load_model(path, device="cpu")  # the converted copy loads before it is damaged
    damage(file)
    message = refused(path, "could not be read as safetensors", WRITERS[name][1])
    assert str(file) in message and "re-download" in message


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_malicious_pickle_is_refused_by_every_loader_and_never_runs(tmp_path, written, name):
    path = _copy(written, name, tmp_path / name)
    as_bin(path)
    marker = tmp_path / "pwned"
    malicious_bin(path, marker)
    message = refused(path, "weights_only=True", WRITERS[name][1])
    assert "pytorch_model.bin" in message
    assert not marker.exists(), "unpickling ran code from the checkpoint"


@pytest.mark.parametrize("name", ["mamba-hf", "llama", "mamba-original"])
@pytest.mark.parametrize("target", ["../outside/model.safetensors", "/etc/passwd", "sub/../../outside/x"])
def test_a_shard_index_pointing_outside_is_refused(tmp_path, written, name, target):
    path = _copy(written, name, tmp_path / "model")
    file = as_safetensors(path)
    (tmp_path / "outside").mkdir()
    file.rename(tmp_path / "outside" / "model.safetensors")
    keys = list(load_file(str(tmp_path / "outside" / "model.safetensors")))
    index = {"metadata": {}, "weight_map": dict.fromkeys(keys, target)}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    message = refused(path, "outside", WRITERS[name][1])
    assert "model.safetensors.index.json" in message


def test_a_shard_index_inside_the_directory_still_loads(tmp_path, written):
    path = _copy(written, "mamba-hf", tmp_path / "model")
    file = as_safetensors(path)
    (path / "shards").mkdir()
    file.rename(path / "shards" / "part-1.safetensors")
    keys = list(load_file(str(path / "shards" / "part-1.safetensors")))
    index = {"metadata": {}, "weight_map": dict.fromkeys(keys, "shards/part-1.safetensors")}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert read_state_dict(path).keys() == set(keys)
    with pytest.raises(JRTError, match="is not a valid shard index"):
        (path / "model.safetensors.index.json").write_text('{"weight_map": [1, 2]}')
        load_model(path, device="cpu")


@pytest.mark.parametrize("name", ["mamba-hf", "jrt-hybrid", "mamba-original"])
@pytest.mark.parametrize("linked", ["weights", "tokenizer.json", "folder"])
def test_a_symlink_pointing_outside_is_refused(tmp_path, written, name, linked):
    path = _copy(written, name, tmp_path / "model")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    if linked == "weights":
        file = next(p for p in (path / "model.safetensors", path / "pytorch_model.bin") if p.exists())
        shutil.move(file, outside / file.name)
        os.symlink(outside / file.name, file)
    elif linked == "tokenizer.json":
        shutil.move(path / "tokenizer.json", outside / "tokenizer.json")
        os.symlink(outside / "tokenizer.json", path / "tokenizer.json")
    else:
        os.symlink(outside, path / "extra")
    message = refused(path, "outside the checkpoint directory", WRITERS[name][1])
    assert "symlink" in message


def test_symlinks_inside_the_directory_and_the_hf_cache_layout_load(tmp_path, written):
    path = _copy(written, "mamba-hf", tmp_path / "model")
    (path / "model.safetensors").rename(path / "weights.bin.data")
    os.symlink("weights.bin.data", path / "model.safetensors")
    assert load_model(path, device="cpu").family == "mamba"
    # the Hugging Face cache: snapshots/REV/file -> ../../blobs/HASH
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / "0123abc"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted(written["mamba-hf"].iterdir())):
        shutil.copy(file, repo / "blobs" / f"blob{i}")
        os.symlink(f"../../blobs/blob{i}", snapshot / file.name)
    assert load_model(snapshot, device="cpu").family == "mamba"


ABSURD = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    from jrt_prompt import load_model
    from jrt_prompt.errors import JRTError
    results = {}
    for case in json.loads(sys.argv[1]):
        started = time.perf_counter()
        try:
            load_model(case, device="cpu")
            outcome = "loaded"
        except JRTError as exc:
            outcome = "JRTError: " + str(exc)
        except BaseException as exc:
            outcome = f"escaped {type(exc).__name__}: {exc}"[:500]
        results[case] = [outcome, time.perf_counter() - started]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"results": results, "rss_mb": rss_mb}))
    """
)

# name: (model, config edits)
ABSURD_CONFIGS = {
    "mamba-vocab": ("mamba-hf", {"vocab_size": 50_000_000}),
    "mamba-layers": ("mamba-hf", {"num_hidden_layers": 10**7}),
    "mamba-width": ("mamba-hf", {"hidden_size": 10**6}),
    "mamba-state": ("mamba-hf", {"state_size": 10**6}),
    "mamba2-heads": ("mamba2-hf", {"num_heads": 10**6}),
    "rwkv-width": ("rwkv", {"hidden_size": 10**6, "attention_hidden_size": 10**6}),
    "llama-layers": ("llama", {"num_hidden_layers": 10**7}),
    "llama-mlp": ("llama", {"intermediate_size": 10**8}),
    "jrt-vocab": ("jrt-hybrid", {"vocab_size": 50_000_000}),
    "jrt-layers": ("jrt-hybrid", {"num_hidden_layers": 10**7, "layer_mixers": ["based"] * 10**5}),
    "original-layers": ("mamba-original", {"n_layer": 10**7}),
    "original-vocab": ("mamba-original", {"vocab_size": 50_000_000}),
    "hazy-layers": ("based-hazy", {"n_layer": 10**7}),
    "hazy-vocab": ("based-hazy", {"vocab_size": 50_000_000}),
}


def test_absurd_config_sizes_are_refused_within_bounded_memory_and_time(tmp_path, written):
    cases = []
    for case, (name, edits) in ABSURD_CONFIGS.items():
        path = _copy(written, name, tmp_path / case)
        config = json.loads((path / "config.json").read_text())
        config.update(edits)
        (path / "config.json").write_text(json.dumps(config))
        cases.append(str(path))
    child = subprocess.run(
        [sys.executable, "-c", ABSURD, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"),
    )
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    for case, (outcome, seconds) in report["results"].items():
        assert outcome.startswith("JRTError: "), (case, outcome)
        assert "\n" not in outcome and "config.json" in outcome, (case, outcome)
        assert seconds < 20, (case, seconds)
    assert report["rss_mb"] < 1500, report["rss_mb"]  # torch and transformers alone take ~500 MB


BROKEN_CONFIGS = [
    ("mamba-hf", {"hidden_size": "abc"}),
    ("mamba-hf", {"hidden_size": -5}),
    ("mamba-hf", {"hidden_size": None}),
    ("mamba-hf", {"num_hidden_layers": 0}),
    ("mamba-hf", {"vocab_size": 0}),
    ("mamba-hf", {"model_type": 123}),
    ("mamba-hf", {"model_type": "no-such-model"}),
    ("mamba-hf", {"state_size": 0}),
    ("mamba-original", {"d_model": "abc"}),
    ("mamba-original", {"n_layer": -1}),
    ("mamba-original", {"ssm_cfg": "x"}),
    ("mamba-original", {"ssm_cfg": {"d_state": "q"}}),
    ("mamba-original", {"vocab_size": None}),
    ("jrt-hybrid", {"layer_mixers": "x"}),
    ("jrt-hybrid", {"num_heads": 0}),
    ("jrt-hybrid", {"hidden_size": 7}),
    ("jrt-hybrid", {"feature_dim": 10**6}),
    ("llama", {"num_attention_heads": 0}),
]


@pytest.mark.parametrize("name, edits", BROKEN_CONFIGS, ids=lambda v: str(v)[:40])
def test_a_broken_config_is_a_one_line_error(tmp_path, written, name, edits):
    path = _copy(written, name, tmp_path / "model")
    config = json.loads((path / "config.json").read_text())
    config.update(edits)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(JRTError) as info:
        load_model(path, device="cpu")
    assert "\n" not in str(info.value) and len(str(info.value)) < 500


@pytest.mark.parametrize(
    "text",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a": ' + b"9" * 5000 + b"}", b"[1]", b"\xff\xfe", b"{" * 10],
    ids=["deep", "huge-int", "not-object", "not-utf8", "torn"],
)
def test_an_unreadable_config_json_is_a_one_line_error(tmp_path, written, text):
    path = _copy(written, "mamba-hf", tmp_path / "model")
    (path / "config.json").write_bytes(text)
    with pytest.raises(JRTError, match="config.json") as info:
        load_model(path, device="cpu")
    assert "\n" not in str(info.value)
