import json

import pytest
import torch
from tiny_models import (
    write_tiny_gla,
    write_tiny_llama,
    write_tiny_mamba,
    write_tiny_mamba2,
    write_tiny_mamba2_original,
    write_tiny_mamba_original,
    write_tiny_rwkv,
)

from jrt_prompt import JRTError, generate, load_model
from jrt_prompt.generation import generate_loaded
from jrt_prompt.models.adapters import fla as fla_adapter
from jrt_prompt.models.loading import get_adapter, locate
from jrt_prompt.models.registry import get_spec, roster

PROMPTS = ["The key is 42. What is the key?", "abc", "Alice signed the lease in Lyon; who signed it?"]


@pytest.mark.parametrize(
    ("writer", "family"),
    [
        (write_tiny_mamba, "mamba"),
        (write_tiny_mamba2, "mamba2"),
        (write_tiny_rwkv, "rwkv"),
        (write_tiny_llama, "transformers"),
    ],
)
def test_load_by_path_and_generate(tmp_path, writer, family):
    path = writer(tmp_path / family)
    loaded = load_model(path, device="cpu")
    assert loaded.family == family
    assert not loaded.model.training
    out = generate_loaded(loaded, PROMPTS, max_new_tokens=6, stop=())
    assert len(out) == 3
    assert all(g.answer_tokens == 6 and g.finish_reason == "length" for g in out)
    assert [g.prompt_tokens for g in out] == [len(p.encode()) for p in PROMPTS]


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_original_mamba_conversion_matches_transformers(tmp_path):
    path, reference = write_tiny_mamba_original(tmp_path / "orig")
    loaded = load_model(path, device="cpu")
    assert loaded.family == "mamba"
    ids = list(b"Alice signed the lease in Lyon.")
    assert torch.allclose(_logits(loaded.model, ids), _logits(reference, ids), atol=1e-5, rtol=0)
    # The padded vocabulary (258 -> 272) is kept, as mamba_ssm's argmax runs over it.
    assert loaded.model.config.vocab_size == 272


def test_original_mamba2_conversion_matches_transformers(tmp_path):
    path, reference = write_tiny_mamba2_original(tmp_path / "orig2")
    loaded = load_model(path, device="cpu")
    assert loaded.family == "mamba2"
    ids = list(b"The rent is 900 euros a month.")
    assert torch.allclose(_logits(loaded.model, ids), _logits(reference, ids), atol=1e-5, rtol=0)


def test_original_mamba_with_lightning_prefix_and_metrics(tmp_path):
    path, reference = write_tiny_mamba_original(tmp_path / "orig")
    state = torch.load(path / "pytorch_model.bin", weights_only=True)
    state = {f"model.{k}": v for k, v in state.items()}
    state["train_metrics.num-tokens.count"] = torch.tensor(3)
    torch.save(state, path / "pytorch_model.bin")
    loaded = load_model(path, device="cpu")
    ids = list(b"hello")
    assert torch.allclose(_logits(loaded.model, ids), _logits(reference, ids), atol=1e-5, rtol=0)


def test_original_mamba_shape_mismatch_names_the_key(tmp_path):
    path, _ = write_tiny_mamba_original(tmp_path / "orig")
    config = json.loads((path / "config.json").read_text())
    config["d_model"] = 48
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(JRTError, match="backbone.embedding.weight"):
        load_model(path, device="cpu")


class NotATensor:  # anything but tensors and plain containers must be refused by torch.load
    pass


def test_pickled_objects_are_refused(tmp_path):
    path, _ = write_tiny_mamba_original(tmp_path / "orig")
    torch.save({"backbone.embedding.weight": NotATensor()}, path / "pytorch_model.bin")
    with pytest.raises(JRTError, match="weights_only=True"):
        load_model(path, device="cpu")


def test_errors_name_the_model_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(JRTError, match=r"unknown model 'mamba-9b'.*jrt models"):
        load_model("mamba-9b", device="cpu")
    with pytest.raises(JRTError, match=r"did you mean mamba-1\.4b"):
        load_model("mamba-1.4", device="cpu")
    with pytest.raises(JRTError) as info:
        load_model("mamba-1.4b", device="cpu")
    message = str(info.value)
    assert "mamba-1.4b" in message and "HF cache (state-spaces/mamba-1.4b)" in message
    assert "(--model DIR, load_model(DIR))" in message and "\n" not in message
    with pytest.raises(JRTError, match="is not a directory"):
        load_model(str(tmp_path / "nowhere"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(JRTError, match="no config.json"):
        load_model(tmp_path / "empty", device="cpu")


def test_config_without_weights(tmp_path):
    path = write_tiny_mamba(tmp_path / "m")
    (path / "model.safetensors").unlink()
    with pytest.raises(JRTError, match="no weights"):
        load_model(path, device="cpu")


def test_models_dir_lookup(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_tiny_mamba(tmp_path / "models" / "state-spaces" / "mamba-130m-hf")
    monkeypatch.setenv("JRT_MODELS_DIR", str(tmp_path / "models"))
    path, spec = locate("mamba-130m")
    assert spec.name == "mamba-130m" and path == tmp_path / "models" / "state-spaces" / "mamba-130m-hf"
    loaded = load_model("mamba-130m", device="cpu")
    assert loaded.name == "mamba-130m" and loaded.family == "mamba"


def test_roster_has_the_papers_models():
    names = set(roster())
    paper = {
        "mamba-130m",
        "mamba-370m",
        "mamba-790m",
        "mamba-1.4b",
        "mamba-2.8b",
        "mamba2-130m",
        "mamba2-370m",
        "mamba2-780m",
        "mamba2-1.3b",
        "mamba2-2.7b",
        "gla-1.3b",
        "gla-2.7b",
        "based-360m",
        "based-1.3b",
        "hazy-mamba-360m",
        "hazy-mamba-1.3b",
    }
    assert paper <= names
    assert {"attn-360m", "attn-1.3b", "jrt-rnn-360m", "jrt-rnn-1.3b"} <= names
    assert sum(1 for s in roster().values() if s.paper == "recurrent") == 16
    assert get_spec("state-spaces/mamba-1.4b").name == "mamba-1.4b"


@pytest.mark.parametrize("name", [n for n, s in roster().items() if not s.package])
def test_roster_state_bytes_match_adapter_formula(name):
    spec = roster()[name]
    adapter = get_adapter(spec.adapter)
    if spec.kv_bytes_per_token is not None:
        assert adapter.state_bytes(spec.arch, 1000, 2) == 1000 * spec.kv_bytes_per_token
    else:
        assert adapter.state_bytes(spec.arch, 2048, 2) == spec.state_bytes
        assert adapter.state_bytes(spec.arch, 8192, 2) == spec.state_bytes  # constant in the prompt length


def test_fla_models_need_a_gpu(tmp_path):
    pytest.importorskip("fla")
    path = write_tiny_gla(tmp_path / "gla")
    with pytest.raises(JRTError, match="need a CUDA GPU"):
        load_model(path, device="cpu")
    assert fla_adapter.detect({"model_type": "gla"}, set())


@pytest.mark.gpu
def test_gla_loads_and_generates_on_gpu(tmp_path):
    pytest.importorskip("fla")
    path = write_tiny_gla(tmp_path / "gla")
    loaded = load_model(path, device="cuda", dtype="bfloat16")
    assert loaded.family == "fla" and loaded.model.config.model_type == "gla"
    batched = generate_loaded(loaded, PROMPTS, max_new_tokens=8, stop=(), batch_size=3)
    single = [generate_loaded(loaded, [p], max_new_tokens=8, stop=())[0] for p in PROMPTS]
    assert all(g.answer_tokens == 8 for g in batched)
    assert [g.text for g in batched] == [g.text for g in single]


def test_generate_on_a_model_loaded_with_transformers(tmp_path):
    from transformers import AutoTokenizer, MambaForCausalLM

    path = write_tiny_mamba(tmp_path / "m")
    model = MambaForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    out = generate(model, tokenizer, PROMPTS[:2], max_new_tokens=4, stop=())
    assert [g.answer_tokens for g in out] == [4, 4]


def test_shipped_demo_model_loads_by_name():
    loaded = load_model("demo", device="cpu")
    assert loaded.family == "based" and loaded.path.name == "demo"
    assert loaded.tokenizer.eos_token_id == 256
    from jrt_prompt.models.catalog import memory_bytes

    size = memory_bytes(roster()["demo"], 4096)
    assert size == memory_bytes(roster()["demo"], 64) and size > 0  # recurrent: constant in the prompt length
