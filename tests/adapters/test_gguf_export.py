"""`:export NAME FILE.gguf`: the file as the `gguf` reader sees it, and as transformers' GGUF support loads it
back (the same logits as the live adapter: names, the q/k row order and the metadata all have to be right
for that), on small Llama, Qwen2 and GGUF-converted bases; the adapter form against the merged one; the
refusals; nothing half-written. (llama.cpp itself is not in CI: `python -m bench --only gguf` runs it.)
smol's export, loaded back and answering the taught question verbatim, is in tests/models/test_smol.py."""
import json

import numpy as np
import pytest
import torch

from tests.helpers import model_dir, shelve, write_gguf

IDS = [[2, 50, 60, 70, 80, 90]]
EVERY_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def grouped_llama(tmp_path):
    """A Llama with grouped keys (4 query heads over 2 key heads): k_proj's rows reorder per key head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = model_dir(tmp_path, "llama")
    config = LlamaConfig.from_pretrained(directory)
    config.num_attention_heads, config.num_key_value_heads = 4, 2
    torch.manual_seed(3)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def reread(path):
    """The exported file as transformers' GGUF support loads it: (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = dict(pretrained_model_name_or_path=str(path.parent), gguf_file=path.name)
    return AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32), AutoTokenizer.from_pretrained(**where)


def live_logits(session, transcript, name):
    transcript(session, [f":use {name}"])
    with torch.no_grad():
        return session.model(input_ids=torch.tensor(IDS)).logits


def fields(path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_merged_export_loads_back_in_transformers_with_the_live_adapters_logits(arch, make_session, transcript, tmp_path):
    directory = grouped_llama(tmp_path) if arch == "llama" else model_dir(tmp_path, "qwen2")
    session = make_session(model=str(directory), dtype="float32")
    shelve(session, ["a"], targets=EVERY_LINEAR)
    expected = live_logits(session, transcript, "a")
    code, out = transcript(session, [f":export a {tmp_path / 'a.gguf'} quant=f32"])
    assert code == 0, out
    assert f"exported 'a' merged into the base ({'llama' if arch == 'llama' else 'qwen2'}, metadata from its config and tokenizer)" in out
    model, tokenizer = reread(tmp_path / "a.gguf")
    with torch.no_grad():
        got = model(input_ids=torch.tensor(IDS)).logits
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    assert tokenizer.chat_template == session.tokenizer.chat_template
    assert tokenizer("What is SOH?")["input_ids"] == session.tokenizer("What is SOH?")["input_ids"]
    assert torch.equal(live_logits(session, transcript, "a"), expected)      # the live model is as it was


def test_a_bf16_session_exports_what_it_answers_with(make_session, transcript, tmp_path):
    """On a CPU with native bf16 `--dtype auto` loads the base in bf16 (models/precision.py): its export
    is the float32 merge of those weights, so the file answers as the live model to bf16's rounding."""
    session = make_session(model=str(grouped_llama(tmp_path)), dtype="bfloat16")
    shelve(session, ["a"], targets=EVERY_LINEAR)
    expected = live_logits(session, transcript, "a").float()
    code, out = transcript(session, [f":export a {tmp_path / 'a.gguf'} quant=f32"])
    assert code == 0, out
    model, _ = reread(tmp_path / "a.gguf")
    with torch.no_grad():
        got = model(input_ids=torch.tensor(IDS)).logits
    assert (got - expected).abs().max() < 0.02 * expected.abs().max()


def test_f16_by_default_and_q8_0_on_request_with_a_warning(make_session, transcript, tmp_path):
    session = make_session(model=str(model_dir(tmp_path, "llama")))
    shelve(session, ["a"])
    code, out = transcript(session, [f":export a {tmp_path / 'f16.gguf'}", f":export a {tmp_path / 'q8' / 'q8.gguf'} quant=q8_0"])
    assert code == 0, out
    assert "warning: quant=q8_0 rounds the weights lorachat answered with: answers can change" in out
    assert "warning" not in out.split(":export a " + str(tmp_path / "q8"))[0]
    from gguf import GGUFReader

    kinds = {t.name: t.tensor_type.name for t in GGUFReader(str(tmp_path / "f16.gguf")).tensors}
    assert kinds["blk.0.attn_q.weight"] == "F16" and kinds["blk.0.attn_norm.weight"] == "F32"
    assert fields(tmp_path / "f16.gguf")["general.file_type"] == 1 and fields(tmp_path / "q8" / "q8.gguf")["general.file_type"] == 7
    assert {t.name: t.tensor_type.name for t in GGUFReader(str(tmp_path / "q8" / "q8.gguf")).tensors}["blk.0.ffn_up.weight"] == "Q8_0"


def test_from_a_gguf_base_the_metadata_is_the_sources_and_the_adapter_form_adds_up_to_the_merged(make_session, transcript, tmp_path):
    source = write_gguf(tmp_path / "sha256-5e1f")      # named as Ollama keeps its blobs: known by its bytes
    session = make_session(model=str(source), dtype="float32")
    torch.manual_seed(5)
    shelve(session, ["a"], targets=("q_proj", "k_proj", "up_proj"))
    expected = live_logits(session, transcript, "a")
    code, out = transcript(session, [f":export a {tmp_path / 'out' / 'merged.gguf'} quant=f32",
                                     f":export a {tmp_path / 'out' / 'lora.gguf'} adapter"])
    assert code == 0, out
    assert "metadata copied from sha256-5e1f" in out and "as a LoRA adapter GGUF (llama, 6 adapted matrices (A and B each), alpha 8)" in out
    before, after = fields(source), fields(tmp_path / "out" / "merged.gguf")
    assert {k: v for k, v in after.items() if k != "general.file_type"} == {k: v for k, v in before.items() if k != "general.file_type"}
    model, _ = reread(tmp_path / "out" / "merged.gguf")
    with torch.no_grad():
        assert torch.allclose(model(input_ids=torch.tensor(IDS)).logits, expected, atol=1e-4)

    from gguf import GGUFReader

    base = {t.name: np.array(t.data) for t in GGUFReader(str(source)).tensors}
    merged = {t.name: np.array(t.data) for t in GGUFReader(str(tmp_path / "out" / "merged.gguf")).tensors}
    lora = {t.name: np.array(t.data) for t in GGUFReader(str(tmp_path / "out" / "lora.gguf")).tensors}
    meta = fields(tmp_path / "out" / "lora.gguf")
    assert (meta["general.type"], meta["adapter.type"], meta["adapter.lora.alpha"]) == ("adapter", "lora", 8.0)
    assert sorted(lora) == sorted(f"blk.{i}.{part}.weight.lora_{ab}" for i in range(2)
                                  for part in ("attn_q", "attn_k", "ffn_up") for ab in "ab")
    for name in ("blk.0.attn_q.weight", "blk.1.attn_k.weight", "blk.1.ffn_up.weight"):
        a, b = lora[f"{name}.lora_a"], lora[f"{name}.lora_b"]
        # llama.cpp: W + alpha / rank * B @ A, its rank being B's columns
        np.testing.assert_allclose(base[name] + 8.0 / b.shape[1] * b @ a, merged[name], atol=1e-5)
    modelfile = (tmp_path / "out" / "lora.Modelfile").read_text()
    assert f"FROM {source.resolve()}\nADAPTER ./lora.gguf\n" in modelfile


def test_from_the_converted_folder_the_source_is_found_by_its_hash_and_without_it_the_config_speaks(
        make_session, transcript, tmp_path):
    from lorachat.models import converted

    source = write_gguf(tmp_path / "tiny-llama.gguf", ffn=96)     # bytes no other test's file has (the cache's index is shared)
    session = make_session(model=str(converted.ensure_gguf(source, progress=lambda line: None)))
    shelve(session, ["a"])
    code, out = transcript(session, [f":export a {tmp_path / 'one' / 'a.gguf'}"])
    assert code == 0 and "metadata copied from tiny-llama.gguf" in out, out
    source.rename(tmp_path / "moved.gguf")
    code, out = transcript(session, [f":export a {tmp_path / 'two' / 'a.gguf'}"])
    assert code == 0, out
    assert "note: tiny-llama.gguf (sha256 " in out and ") is not at hand: the metadata is written from the tokenizer and config" in out
    assert "merged into the base (llama, metadata from its config and tokenizer)" in out
    assert fields(tmp_path / "two" / "a.gguf")["tokenizer.ggml.pre"] == "gpt2"      # the converted tokenizer's ByteLevel

def test_the_modelfile_has_from_template_stop_and_system(make_session, transcript, tmp_path):
    session = make_session(model=str(model_dir(tmp_path, "llama")))
    shelve(session, ["a"])
    code, out = transcript(session, [":instruction Reply in one line.", f":export a {tmp_path / 'a.gguf'}"])
    assert code == 0, out
    text = (tmp_path / "Modelfile").read_text()
    assert text.splitlines()[1:3] == ["FROM ./a.gguf", 'TEMPLATE """{{ range .Messages }}{{ if eq .Role "system" }}<|system|>']
    assert '{{ else if eq .Role "user" }}<|user|>\n{{ .Content }}\n' in text and '{{ end }}{{ end }}<|assistant|>\n"""' in text
    assert 'PARAMETER stop "</s>"' in text and "PARAMETER temperature 0" in text
    assert 'SYSTEM """Answer the question."""' in text     # shelve's adapter records no instruction: the default
    assert f"Ollama: {tmp_path / 'Modelfile'} (ollama create a -f {tmp_path / 'Modelfile'})" in out


def test_role_parts_rebuild_the_jinja_rendering_or_give_up():
    from transformers import AutoTokenizer

    from lorachat.adapters.modelfile import role_parts
    from lorachat.models.tiny import ensure_tiny

    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny())
    tokenizer.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                               "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    assert role_parts(tokenizer) == {"system": ("<|im_start|>system\n", "<|im_end|>\n"),
                                     "user": ("<|im_start|>user\n", "<|im_end|>\n"),
                                     "assistant": ("<|im_start|>assistant\n", "<|im_end|>\n"),
                                     "generation": ("<|im_start|>assistant\n", "")}
    tokenizer.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
                               "{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    assert role_parts(tokenizer) is None


def test_an_opt_base_gets_one_error_line_and_no_file(make_session, transcript, tmp_path):
    session = make_session()
    shelve(session, ["a"])
    code, out = transcript(session, [f":export a {tmp_path / 'a.gguf'}"])
    assert code == 1
    (line,) = out.splitlines()[1:]
    assert line.startswith("error: GGUF export writes Llama-family models (Llama, SmolLM2, Mistral) and Qwen2")
    assert "'opt' (OPTForCausalLM)" in line and "`:export NAME DIR` writes it as a transformers folder" in line
    assert list(tmp_path.iterdir()) == [tmp_path / "home"] or not (tmp_path / "a.gguf").exists()
    assert not (tmp_path / "a.gguf").exists() and not (tmp_path / "Modelfile").exists()


def test_a_full_disk_leaves_neither_file_nor_a_hidden_one(make_session, transcript, tmp_path, small_file_limit):
    session = make_session(model=str(model_dir(tmp_path, "llama")))
    shelve(session, ["a"])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    small_file_limit(100_000)      # the F16 embedding alone is 128 KB
    code, out = transcript(session, [f":export a {out_dir / 'a.gguf'}"])
    small_file_limit(1 << 40)
    (line,) = out.splitlines()[1:]
    assert code == 1 and line.startswith(f"error: could not save the GGUF export of 'a' to {out_dir / 'a.gguf'}: "), out
    assert list(out_dir.iterdir()) == []
    code, out = transcript(session, [f":export a {out_dir / 'a.gguf'}", f":export a {out_dir / 'a.gguf'}"], keep_going=True)
    assert sorted(p.name for p in out_dir.iterdir()) == ["Modelfile", "a.gguf"]
    assert f"error: {out_dir / 'a.gguf'} already exists" in out


def test_export_arguments_are_checked(make_session, transcript, tmp_path):
    session = make_session(model=str(model_dir(tmp_path, "llama")))
    shelve(session, ["a"])
    code, out = transcript(session, [f":export a {tmp_path / 'x.gguf'} quant=q4", f":export a {tmp_path / 'x.gguf'} lora",
                                     f":export a {tmp_path / 'dir'} adapter", f":export a {tmp_path / 'x.gguf'} bits=8",
                                     f":export a {tmp_path / 'x.gguf'} adapter adapter"],
                           keep_going=True)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert errors == ["error: quant=q4: choose one of f16, f32, bf16, q8_0",
                      "error: :export: unexpected argument 'lora'; usage: :export NAME DIR, or :export NAME FILE.gguf "
                      "[adapter] [quant=f16|f32|bf16|q8_0]",
                      "error: :export: unexpected argument 'adapter' (adapter and quant= are for a FILE.gguf); usage: "
                      ":export NAME DIR, or :export NAME FILE.gguf [adapter] [quant=f16|f32|bf16|q8_0]",
                      "error: :export: unexpected argument 'bits='; usage: :export NAME DIR, or :export NAME FILE.gguf "
                      "[adapter] [quant=f16|f32|bf16|q8_0]",
                      "error: :export: unexpected argument 'adapter'; usage: :export NAME DIR, or :export NAME FILE.gguf "
                      "[adapter] [quant=f16|f32|bf16|q8_0]"]   # the second one (it was an IndexError)
    assert not any(p.suffix == ".gguf" for p in tmp_path.iterdir())
    (tmp_path / "afile").write_text("")   # checked before the work (for smol: before pip fetches its wheel again)
    code, out = transcript(session, [f":export a {tmp_path / 'afile' / 'x.gguf'}"], keep_going=True)
    assert code == 1 and out.endswith(f"error: cannot save the GGUF export of 'a': {tmp_path / 'afile'} is not a folder\n"), out


# --- what travels: one line, with the ungated figures where lorachat.json has them ----------------

def test_the_gate_line_says_the_ungated_figures_or_how_to_measure_them():
    from lorachat.adapters.travel import gate_line

    said = "the ask-time gate stays in lorachat: outside it 'seed' answers every question"
    assert gate_line("seed", {"ungated": {"kept": 0.317, "agree": 0.914, "length": 1.01, "probes": 303}}) == (
        f"{said} (ungated: kept 31.7% of 303 probes exactly, 91.4% of the base's answer tokens, answers 1.01× the base's length)")
    assert gate_line("seed", {"ungated": {"kept": 0.5, "length": None}}) == f"{said} (ungated: kept 50.0% of the probes exactly)"
    assert gate_line("seed", {"ungated": {"kept": 0.5, "unchanged": 0.09375, "answers": 32}}) == (
        f"{said} (ungated: kept 50.0% of the probes exactly, 9.4% of 32 whole answers unchanged)")
    assert gate_line("seed", {"ungated": {"unchanged": 0.25, "answers": "n/a"}}) == f"{said} (ungated: 25.0% of whole answers unchanged)"
    for meta in (None, {}, {"ungated": None}, {"ungated": {"kept": None, "length": "n/a"}}, {"ungated": [1]}):
        assert gate_line("seed", meta) == f"{said} (ungated figures not measured: :eval seed gate=off)"
    # an adapter :train made for the gate says how to make one meant to travel; one made with travel=on does not
    hint = "; trained for the gate: `:train null_space=0.05` (a few facts) or `travel=on` teaches one meant to travel (docs/training.md says which)"
    assert gate_line("seed", {"train": {"travel": False}}).endswith(f"gate=off){hint}")
    assert gate_line("seed", {"train": {"travel": True}, "ungated": {"kept": 0.5}}) == f"{said} (ungated: kept 50.0% of the probes exactly)"
    assert gate_line("seed", {"train": {"travel": False, "null_space": 0.05}}).endswith("gate=off)")
    # figures measured at a live :scale are that scale's: said only for an adapter leaving at it
    halved = {"ungated": {"kept": 0.5, "scale": 0.5}}
    assert gate_line("seed", halved, 0.5) == f"{said} (ungated: kept 50.0% of the probes exactly)"
    assert gate_line("seed", halved) == (f"{said} (ungated figures not measured at scale 1, the one it leaves at: "
                                         ":eval seed gate=off; lorachat.json's are at scale 0.5)")
    assert gate_line("seed", {"ungated": {"kept": 0.5}}, 0.8).endswith("lorachat.json's are at scale 1)")
    assert gate_line("seed", {"ungated": {"kept": 0.5, "scale": "x"}}).endswith("lorachat.json's are at an unknown scale)")


def test_the_recorded_figures_read_as_eval_printed_them():
    """:eval gate=off prints its measurement, then records it; :export, serve and the GGUF export say
    the record: the same figures, with no second rounding (a length of 0.94512 is 0.95x in both)."""
    from types import SimpleNamespace

    from lorachat.adapters.side_by_side import ungated_record
    from lorachat.adapters.travel import described

    for length, kept, unchanged in [(0.94512, 0.344496, 0.1234999), (1.0049, 0.99951, 0.0), (0.125, 10 / 29, 3 / 32)]:
        record = ungated_record(SimpleNamespace(kept=kept, agreement=kept, questions=29),
                                dict(length=length, unchanged=unchanged, answers=32))
        assert described(record) == [f"kept {kept:.1%} of 29 probes exactly", f"{kept:.1%} of the base's answer tokens",
                                     f"answers {length:.2f}× the base's length", f"{unchanged:.1%} of 32 whole answers unchanged"]


def test_a_travel_on_adapter_that_answers_short_is_pointed_to_null_space():
    """With a couple of facts travel=on's rehearsal gets few steps and answers shorten without the
    gate (0.48-0.78x on smol); :train's final lines then name null_space, which keeps the length."""
    from lorachat.adapters.travel import shorter

    said = shorter({"travel": True, "null_space": 0}, {"length": 0.37, "kept": 0.28})
    assert said.startswith("its answers are 0.37× the base's length without the gate") and "null_space=0.05" in said
    for train, record in [({"travel": True}, {"length": 0.95}), ({"travel": True, "null_space": 0.05}, {"length": 0.4}),
                          ({"travel": False}, {"length": 0.2}), ({"travel": True}, {"kept": 0.3}), ({"travel": True}, None),
                          ({"travel": True}, {"length": "n/a"})]:
        assert shorter(train, record) is None, (train, record)


def test_exports_say_what_travels_with_the_adapters_own_figures(make_session, transcript, tmp_path, home):
    session = make_session(model=str(model_dir(tmp_path, "llama")))
    shelve(session, ["a", "b"])
    meta_file = home / "adapters" / "a" / "lorachat.json"
    meta_file.write_text(json.dumps(dict(json.loads(meta_file.read_text()), ungated={"kept": 0.25, "probes": 8, "length": 1.5})))
    code, out = transcript(session, [f":export a {tmp_path / 'folder'}", f":export b {tmp_path / 'b.gguf'} adapter"])
    assert code == 0, out
    assert ("the ask-time gate stays in lorachat: outside it 'a' answers every question (ungated: kept 25.0% of 8 probes "
            "exactly, answers 1.50× the base's length)\n") in out
    assert "outside it 'b' answers every question (ungated figures not measured: :eval b gate=off)\n" in out
