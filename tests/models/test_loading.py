"""Loading base models: the built-in tiny model, local folders of each architecture, hub ids without network."""
import hashlib
import time

import pytest

from lorachat.core import prompts
from lorachat.core.errors import LorachatError
from tests.helpers import model_dir


def weights_hash(directory):
    return hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()


def test_tiny_build_is_deterministic(tmp_path, monkeypatch):
    from lorachat.models import tiny

    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    tiny.build_tiny(first)
    tiny.build_tiny(second)
    assert weights_hash(first) == weights_hash(second)
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()


def test_tiny_is_an_ordinary_model_directory():
    from transformers import AutoModelForCausalLM, AutoTokenizer, OPTForCausalLM

    from lorachat.models.tiny import ensure_tiny

    path = ensure_tiny()
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert isinstance(model, OPTForCausalLM)
    assert model.config.hidden_size == 512 and model.config.num_hidden_layers == 2
    assert tokenizer.eos_token_id == model.config.eos_token_id
    text = "What is SOH in semiconductor manufacturing?"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_model_directory_loads_with_model_flag(tmp_path, arch, capsys):
    from lorachat.cli import main

    directory = model_dir(tmp_path, arch, layers=1, ffn=128, seed=1)
    code = main(["--model", str(directory), "--home", str(tmp_path), "-e", ":info", "-e", "What is SOH?"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"path         {directory.resolve()}" in out
    assert "> What is SOH?" in out


def test_llama_chat_template_is_used(tmp_path):
    from lorachat.models.loader import load_model

    loaded = load_model(str(model_dir(tmp_path, "llama", layers=1, ffn=128, seed=1)), device="cpu")
    text = prompts.render_prompt(loaded.tokenizer, "Be brief.", "What?")
    assert text == "<|system|>\nBe brief.\n<|user|>\nWhat?\n<|assistant|>\n"


def test_unreachable_hub_id_fails_fast(tmp_path, capsys, monkeypatch):
    from lorachat.cli import main

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))       # and nothing is cached
    start = time.monotonic()
    code = main(["--model", "facebook/opt-2.7b", "-e", ":info"])
    elapsed = time.monotonic() - start
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith("error: cannot load model 'facebook/opt-2.7b': the hub is unreachable")
    assert "--model tiny" in out and out.count("\n") == 1
    assert elapsed < 10


def test_missing_directory_and_not_a_causal_lm(tmp_path):
    from transformers import AutoTokenizer, T5Config, T5Model

    from lorachat.models.loader import load_model
    from lorachat.models.tiny import ensure_tiny

    with pytest.raises(LorachatError, match="no such directory"):
        load_model(str(tmp_path / "nope"), device="cpu")
    with pytest.raises(LorachatError, match="no such directory"):   # a folder's name, not a hub id
        load_model("nosuchdir/", device="cpu")
    t5 = tmp_path / "t5"
    T5Model(T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2, vocab_size=1000)).save_pretrained(t5)
    AutoTokenizer.from_pretrained(ensure_tiny()).save_pretrained(t5)
    with pytest.raises(LorachatError, match="cannot load model '.*t5': it is not a causal language model"):
        load_model(str(t5), device="cpu")
