"""Hostile or broken adapter files and bad command input: one clear line, nothing changed."""
import json
import re
import shutil

import pytest
import torch

from lorachat.adapters import live, paths
from tests.helpers import logits, shelve


def state(session):
    return (session.model, live.loaded_names(session), session.active_adapter, logits(session))


def assert_unchanged(session, before):
    model, loaded, active, values = before
    assert session.model is model and live.loaded_names(session) == loaded and session.active_adapter == active
    assert torch.equal(logits(session), values)


def clone(session, source, name):
    shutil.copytree(session.home / "adapters" / source, session.home / "adapters" / name)
    return session.home / "adapters" / name


@pytest.fixture
def shelved(make_session):
    session = make_session()
    shelve(session, ["a", "b"])
    return session


@pytest.mark.parametrize("wrapped", [False, True])
def test_broken_adapters_are_refused_and_change_nothing(shelved, transcript, wrapped):
    session = shelved
    if wrapped:
        transcript(session, [":use a"])
    truncated = clone(session, "b", "truncated") / "adapter_model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:500])
    (clone(session, "b", "noconfig") / "adapter_config.json").unlink()
    (clone(session, "b", "badjson") / "adapter_config.json").write_text("{not json")
    (clone(session, "b", "notype") / "adapter_config.json").write_text('{"r": "x"}')
    meta = clone(session, "b", "elsewhere") / "lorachat.json"
    meta.write_text(json.dumps(dict(json.loads(meta.read_text()), base_model="facebook/opt-125m", base_fingerprint="sha256:0123")))
    config = clone(session, "b", "wrongrank") / "adapter_config.json"
    config.write_text(json.dumps(dict(json.loads(config.read_text()), r=8)))  # tensors are r=4: PEFT fails mid-load
    config = clone(session, "b", "nohead") / "adapter_config.json"   # its weights hold no lm_head copy
    config.write_text(json.dumps(dict(json.loads(config.read_text()), modules_to_save=["lm_head"])))
    config = clone(session, "b", "badalpha") / "adapter_config.json"
    config.write_text(json.dumps(dict(json.loads(config.read_text()), lora_alpha="x")))
    foreign = clone(session, "b", "llama") / "adapter_model.safetensors"
    from safetensors.torch import load_file, save_file

    save_file({k.replace("model.decoder.layers", "model.layers"): v for k, v in load_file(foreign).items()}, foreign)
    before = state(session)
    code, out = transcript(session, [f":use {n}" for n in ("truncated", "noconfig", "badjson", "elsewhere", "wrongrank", "llama", "nothere", "notype", "badalpha", "nohead")], keep_going=True)
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(errors) == 10 and "Traceback" not in out
    assert "adapter_model.safetensors is corrupt or truncated" in errors[0]
    assert "has no adapter_config.json" in errors[1]
    assert "adapter_config.json is unreadable or not JSON" in errors[2]
    assert "was made for base model 'facebook/opt-125m' (sha256:0123), not the loaded 'tiny' (sha256:" in errors[3]
    assert errors[4].startswith("error: cannot load adapter 'wrongrank': ") and "size mismatch" in errors[4]
    assert "targets 4 module(s) the loaded model 'tiny' lacks, e.g. model.layers.0.self_attn.q_proj" in errors[5]
    assert "no adapter named 'nothere'" in errors[6]
    assert errors[7] == "error: adapter 'notype': adapter_config.json has no peft_type (a LoRA adapter's says \"peft_type\": \"LORA\")"
    assert errors[8] == "error: adapter 'badalpha': adapter_config.json has lora_alpha=\"x\", not a number"
    assert errors[9] == "error: cannot load adapter 'nohead': missing 'base_model.model.lm_head.weight'"
    assert_unchanged(session, before)
    # --force overrides the fingerprint only
    session.force = True
    code, out = transcript(session, [":use elsewhere", ":use llama"], keep_going=True)
    assert "loading it anyway (--force)" in out and "using adapter 'elsewhere'" in out and "lacks" in out


def test_pickle_adapters_need_allow_pickle(shelved, transcript):
    from safetensors.torch import load_file

    session = shelved
    path = clone(session, "a", "pickled")
    torch.save(load_file(path / "adapter_model.safetensors"), path / "adapter_model.bin")
    (path / "adapter_model.safetensors").unlink()
    before = state(session)
    code, out = transcript(session, [":use pickled"])
    assert code == 1 and "saved as a pickle (adapter_model.bin)" in out and "--allow-pickle" in out
    assert_unchanged(session, before)
    transcript(session, [":use a"])
    expected = logits(session)
    session.allow_pickle = True
    assert transcript(session, [":use pickled"])[0] == 0
    assert torch.equal(logits(session), expected)


BAD_NAMES = ["../x", "a/b", ".hidden", "x" * 10_000, "bad\x07name", "''"]


def test_bad_input_gets_one_line_and_writes_nothing(shelved, transcript, tmp_path):
    session = shelved
    lines = [":use", ":use a b", ":rename a", ":rename a b c", ":export a", ":scale", ":scale a abc", ":scale a 100",
             ":scale a nan", ":delete", ":delete a maybe", ":adapters x", ":compare --", ":eval dataset=../x",
             ":eval steps=3", ":merge a b as", ":merge a b as c d", ":merge a b as c method=foo",
             ":merge a b as c density=abc", ":merge a b as c weights=1,x", ":merge a b as c weights=1,inf",
             ":merge a a as c", ":rename a b", ":rename nothere z", ":delete nothere yes", ":use base2"]
    for name in BAD_NAMES:
        lines += [f":use {name}", f":delete {name} yes", f":rename a {name}", f":export {name} {tmp_path / 'e'}",
                  f":scale {name} 1", f":merge a b as {name}", f":compare {name}"]
    before_files = sorted(p.name for p in (session.home / "adapters").iterdir())
    before = state(session)
    code, out = transcript(session, lines, keep_going=True)
    assert code == 1 and "Traceback" not in out
    outputs = re.split(r"^> ", out, flags=re.M)[1:]
    assert len(outputs) == len(lines)
    for line, output in zip(lines, outputs):
        assert output.count("\nerror: ") == 1 and output.splitlines()[-1].startswith("error: "), (line, output)
        assert len(output.splitlines()[-1]) < 400
    assert sorted(p.name for p in (session.home / "adapters").iterdir()) == before_files
    assert not (tmp_path / "e").exists()
    assert_unchanged(session, before)


def test_compare_without_a_question_and_unknown_names(shelved, transcript):
    code, out = transcript(shelved, [":compare", ":compare zz -- hi"], keep_going=True)
    assert out.count("error: ") == 2 and "no question yet" in out and "no adapter named 'zz'" in out


def test_hidden_leftovers_of_dead_writers_are_swept_on_the_next_save(shelved):
    import os

    folder = shelved.home / "adapters"
    dead, live = folder / ".x.tmp-999999999-abc", folder / f".y.tmp-{os.getppid()}-abc"
    for leftover in (dead, live):
        leftover.mkdir()
        (leftover / "adapter_config.json").write_text("{}")
    assert paths.saved_names(shelved) == ["a", "b"]  # hidden: ignored
    shelve(shelved, ["c"])
    assert not dead.exists() and live.exists()


def test_a_damaged_lorachat_json_is_called_damaged_not_missing(shelved, transcript):
    (clone(shelved, "b", "badmeta") / "lorachat.json").write_text("{not json")
    code, out = transcript(shelved, [":use badmeta", ":adapters"])
    assert code == 0 and "adapter 'badmeta' has a damaged lorachat.json: its provenance is unknown" in out, out
    (row,) = [r for r in out.splitlines() if r.startswith("*")]
    assert "unknown (damaged lorachat.json)" in row, out
    (clone(shelved, "b", "emptymeta") / "lorachat.json").write_text("{}")   # JSON, but no record: the same words
    code, out = transcript(shelved, [":use emptymeta"])
    assert code == 0 and "adapter 'emptymeta' has a damaged lorachat.json: its provenance is unknown" in out, out
