"""Adapters: exact hot-swap, LRU, scale, delete/rename, PEFT interop, hostile files, bad input."""
import hashlib
import json
import shutil

import pytest
import torch

from lorachat.adapters import live, paths
from tests.helpers import logits, lora_config, shelve

QUESTION = "What is SOH?"


def base_hash(session):
    """sha256 of every base weight as the base itself holds it (LoRA layers' pristine weights)."""
    state = session.loaded.model.state_dict()
    current = live.state(session).switch
    digest = hashlib.sha256()
    for key in sorted(state):
        if ".lora_" in key:
            continue
        tensor = state[key]
        if current is not None and key.endswith("base_layer.weight"):
            layer = session.loaded.model.get_submodule(key.removesuffix(".base_layer.weight"))
            tensor = current.pristine[layer]
        raw = tensor.detach().reshape(-1).contiguous().view(torch.uint8)   # any dtype's bytes (numpy has no bf16)
        digest.update(key.replace("base_layer.", "").encode() + raw.numpy().tobytes())
    return digest.hexdigest()


def test_switching_is_exact_and_merges_for_decoding(make_session, transcript):
    session = make_session(dtype="float32")   # merged and unmerged agree to float32's rounding (bf16: ~1e-2)
    untrained, original = logits(session), base_hash(session)
    shelve(session, ["a", "b"])
    assert transcript(session, [":use a"])[1] == "> :use a\nusing adapter 'a'\n"
    first_a = logits(session)
    current = live.switch(session)
    assert current.merged  # a no-grad eval forward decodes from merged weights
    with current.unmerged():
        unmerged_a = logits(session)  # PEFT's own LoRA forward
    assert torch.allclose(first_a, unmerged_a, atol=1e-5) and not torch.equal(first_a, untrained)
    transcript(session, [":use b"])
    assert not torch.allclose(logits(session), first_a)
    transcript(session, [":use a"])
    assert torch.equal(logits(session), first_a)
    transcript(session, [":use base"])
    assert torch.equal(logits(session), untrained)
    assert session.active_adapter is None and base_hash(session) == original


def test_a_merge_over_its_byte_limit_is_not_made_and_answers_come_through_peft(make_session, transcript):
    """On the CPU the merged copies are bounded (switching.CPU_MERGE_BYTES; OPT-2.7B's fc1 copies are
    1.7 GB): over the limit the adapter answers unmerged, exactly as PEFT's own forward does."""
    session = make_session(dtype="float32")
    shelve(session, ["a"])
    transcript(session, [":use a"])
    current = live.switch(session)
    assert current.merge_bytes is None and current.pristine[current.layers[0]].device.type == "cpu"
    current.merge_bytes = 0   # a session whose copies would be over the limit
    over = logits(session)
    assert not current.merged and not current.buffers
    with current.unmerged():
        assert torch.equal(logits(session), over)
    current.merge_bytes = None   # tiny's copies are far under CPU_MERGE_BYTES: merged again
    transcript(session, [":use base", ":use a"])
    assert torch.allclose(logits(session), over, atol=1e-5) and current.merged


def test_fifty_switches_with_answers_leave_base_bit_identical(shelved, transcript):
    session = shelved
    untrained, original = logits(session), base_hash(session)
    transcript(session, [":set max_new_tokens=2"])
    for i in range(50):
        transcript(session, [f":use {'abc'[i % 3] if i % 4 else 'base'}", QUESTION])
    transcript(session, [":use base"])
    assert base_hash(session) == original
    assert torch.equal(logits(session), untrained)


def test_training_after_a_merged_answer_sees_base_weights_and_gets_gradients(shelved, transcript):
    session = shelved
    untrained = logits(session)
    transcript(session, [":use a"])
    logits(session)  # merged now
    model = live.add_new(session, "t", lora_config())
    model.train()
    with torch.enable_grad():
        out = model(input_ids=torch.tensor([[2, 50, 60]]), labels=torch.tensor([[2, 50, 60]]))
        out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if ".t." in n and "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    model.eval()
    live.remove(session, "t")
    assert session.active_adapter == "a"
    transcript(session, [":use base"])
    assert torch.equal(logits(session), untrained)


def test_cat_merge_equals_the_sum_of_both_deltas(shelved_float32, transcript, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    session = shelved_float32
    for name, longest in (("a", 5), ("b", 7)):   # what :train records for asking and serving
        meta_file = session.home / "adapters" / name / "lorachat.json"
        meta_file.write_text(json.dumps(dict(json.loads(meta_file.read_text()), instruction="Be brief.", max_answer_tokens=longest)))
    code, out = transcript(session, [":merge a b as ab weights=1,0.5"])
    assert code == 0 and out.endswith("now active\n") and session.active_adapter == "ab"
    merged = logits(session)
    manual = AutoModelForCausalLM.from_pretrained(session.loaded.path).eval()
    home = session.home / "adapters"
    for name, weight in (("a", 1.0), ("b", 0.5)):
        config = json.loads((home / name / "adapter_config.json").read_text())
        tensors = load_file(home / name / "adapter_model.safetensors")
        for key, lora_a in tensors.items():
            if ".lora_A." in key:
                module = manual.get_submodule(key.removeprefix("base_model.model.").split(".lora_A.")[0])
                delta = tensors[key.replace("lora_A", "lora_B")] @ lora_a * (config["lora_alpha"] / config["r"])
                module.weight.data += weight * delta
    with torch.no_grad():
        expected = manual(input_ids=torch.tensor([[2, 50, 60, 70, 80, 90]])).logits
    assert torch.allclose(merged, expected, atol=1e-4)
    meta = json.loads((home / "ab" / "lorachat.json").read_text())
    assert (meta["merged_from"], meta["method"], meta["weights"], meta["density"]) == (["a", "b"], "cat", [1.0, 0.5], None)
    assert (meta["instruction"], meta["max_answer_tokens"]) == ("Be brief.", 7)


def test_merge_methods_check_their_needs_up_front(shelved, transcript):
    session = shelved
    shelve(session, ["r8"], r=8)
    before = sorted(p.name for p in (session.home / "adapters").iterdir())
    code, out = transcript(session, [":merge a b as x method=ties", ":merge a r8 as x method=linear",
                                     ":merge a b as x density=0.5", ":merge a b as x weights=1",
                                     ":merge a as x", ":merge a b x", ":merge a b as a",
                                     ":merge a b as x method=best", ":merge a b as x density=2"], keep_going=True)
    assert code == 1
    assert out.count("error: ") == 9
    assert "method=ties keeps only a fraction of each delta: give density=D" in out
    assert "method=linear needs adapters of equal rank (a: r=4, r8: r=8); use method=cat or svd" in out
    assert sorted(p.name for p in (session.home / "adapters").iterdir()) == before
    assert transcript(session, [":merge a b as t method=dare_ties density=0.5"])[0] == 0


def test_export_reloads_anywhere_and_leaves_the_live_model_alone(shelved_float32, transcript, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    session = shelved_float32
    transcript(session, [":use a"])
    adapter_logits, original = logits(session), base_hash(session)
    code, out = transcript(session, [f":export a {tmp_path / 'out'}"])
    assert code == 0, out
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        exported = model(input_ids=torch.tensor([[2, 50, 60, 70, 80, 90]])).logits
    assert torch.allclose(exported, adapter_logits, atol=1e-4)
    assert AutoTokenizer.from_pretrained(tmp_path / "out")(QUESTION)["input_ids"] == session.tokenizer(QUESTION)["input_ids"]
    assert any(p.suffix == ".safetensors" for p in (tmp_path / "out").iterdir())
    assert base_hash(session) == original and torch.equal(logits(session), adapter_logits)
    code, out = transcript(session, [f":export a {tmp_path / 'out'}"])
    assert code == 1 and "already exists and is not an empty folder" in out
    (tmp_path / "file").write_text("mine")
    code, out = transcript(session, [f":export a {tmp_path / 'file'}", ":export a ''", ':export a "out\x00x"',
                                     ':export a "out\x00x.gguf"'], keep_going=True)
    assert out.count("\nerror: ") == 4 and "Traceback" not in out, out
    assert f"{tmp_path / 'file'} is a file, not a folder" in out and "'' is not a usable path" in out


def test_plain_peft_adapters_work_both_ways(shelved_float32, transcript):
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    session = shelved_float32
    # made elsewhere with plain PEFT: loads, with a note on provenance
    torch.manual_seed(7)
    foreign = get_peft_model(AutoModelForCausalLM.from_pretrained(session.loaded.path), lora_config(targets=("k_proj",)), adapter_name="ext")
    foreign.save_pretrained(session.home / "staging", selected_adapters=["ext"])
    shutil.move(session.home / "staging" / "ext", session.home / "adapters" / "ext")
    with torch.no_grad():
        expected = foreign.eval()(input_ids=torch.tensor([[2, 50, 60, 70, 80, 90]])).logits
    code, out = transcript(session, [":use ext"])
    assert code == 0 and "has no lorachat.json: its provenance is unknown" in out
    assert torch.allclose(logits(session), expected, atol=1e-5)
    # lorachat's own adapter (named "a", a substring of PEFT's prefix "lora_") in plain PEFT
    transcript(session, [":use a"])
    with live.switch(session).unmerged():
        ours = logits(session)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(session.loaded.path), session.home / "adapters" / "a").eval()
    with torch.no_grad():
        assert torch.equal(plain(input_ids=torch.tensor([[2, 50, 60, 70, 80, 90]])).logits, ours)


@pytest.mark.parametrize("fixture", ["shelved_float32", "shelved"])   # one mixed batch; auto (bf16 here): one at a time
def test_compare_answers_equal_use_then_ask(fixture, request, transcript):
    session = request.getfixturevalue(fixture)
    transcript(session, [":set max_new_tokens=12"])
    code, out = transcript(session, [f":compare a b -- {QUESTION}"])
    assert code == 0
    blocks = out.split("\n")[1:-1]
    assert blocks[0::2] == ["[base]", "[a]", "[b]"]
    for name, answer in zip(["base", "a", "b"], blocks[1::2]):
        assert transcript(session, [f":use {name}", QUESTION])[1].splitlines()[-1] == answer
    assert session.active_adapter == "b"
    again = transcript(session, [":use a", ":compare"])[1]  # the last question; base and all loaded
    assert again.splitlines()[3:] == ["[base]", blocks[1], "[a]", blocks[3], "[b]", blocks[5]]
    assert session.active_adapter == "a"


def test_lru_keeps_max_loaded_and_scale_survives_reload(shelved, transcript):
    session = shelved
    transcript(session, [":set max_loaded=2", ":use a"])
    full = logits(session)
    transcript(session, [":scale a 0", ":use base"])
    base = logits(session)
    transcript(session, [":use a"])
    assert torch.allclose(logits(session), base, atol=1e-6)
    transcript(session, [":use b", ":use c"])
    assert live.loaded_names(session) == ["b", "c"]
    assert "  no, scale 0\n" in transcript(session, [":adapters"])[1]   # unloaded, its scale kept
    transcript(session, [":use a"])  # reloaded from disk: still scaled to 0
    assert sorted(live.loaded_names(session)) == ["a", "c"]
    assert "  yes, scale 0\n" in transcript(session, [":adapters"])[1]
    assert torch.allclose(logits(session), base, atol=1e-6)
    transcript(session, [":scale a 1"])
    assert torch.equal(logits(session), full)
    out = transcript(session, [":adapters"])[1]
    assert out.splitlines()[2].startswith("*  a ") and out.count("yes") == 2


def test_delete_and_rename(shelved, transcript):
    session = shelved
    code, out = transcript(session, [":use a", ":rename a films", ":delete b yes", ":delete films", ":adapters"], keep_going=True)
    assert "renamed 'a' to 'films'" in out and "deleted adapter 'b'" in out
    assert "error: :delete in a script needs confirming: :delete films yes" in out
    assert session.active_adapter == "films"
    assert json.loads((session.home / "adapters" / "films" / "lorachat.json").read_text())["name"] == "films"
    assert sorted(p.name for p in (session.home / "adapters").iterdir()) == ["c", "films"]
    transcript(session, [":delete films yes"])
    assert session.active_adapter is None and paths.saved_names(session) == ["c"]


def test_eval_reports_loss_and_recall(shelved, transcript):
    session = shelved
    lines = [{"instruction": "Answer the question.", "input": "What is SOH?", "output": "A hardmask."},
             {"instruction": "Answer the question.", "input": "What is CMP?", "output": "Polishing."}]
    (session.home / "datasets").mkdir()
    (session.home / "datasets" / "qa.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, out = transcript(session, [":eval a b dataset=qa"])
    assert code == 0, out
    rows = out.splitlines()[3:]
    assert [r.split()[0] for r in rows] == ["base", "a", "b"] and all(r.split()[2] == "0/2" for r in rows)


def test_max_loaded_1_keeps_one_adapter_loaded(shelved, transcript):
    from lorachat.adapters import live

    session = shelved
    transcript(session, [":use a", ":use b", ":set max_loaded=1"])
    assert live.loaded_names(session) == ["b"]
    transcript(session, [":set max_loaded=3", ":use a", ":use c", ":set max_loaded=1"])
    assert live.loaded_names(session) == ["c"] and session.active_adapter == "c"
    transcript(session, [":use a"])
    assert live.loaded_names(session) == ["a"]
    transcript(session, [":add q => a", ":train t steps=1 until=steps"])
    assert live.loaded_names(session) == ["t"] and session.active_adapter == "t"
    code, out = transcript(session, [":eval a b builtin=0"])   # evaluated together, then back to one
    assert code == 0 and live.loaded_names(session) == ["t"], out


def test_export_and_merge_say_a_live_scale_was_merged_in_and_named_adapters_have_peft_readme(shelved, transcript, home, tmp_path):
    session = shelved
    assert (home / "adapters" / "a" / "README.md").is_file()  # PEFT's model card, nested names too
    code, out = transcript(session, [":scale a 0.5", f":export a {tmp_path / 'half'}", ":scale a 1", f":export a {tmp_path / 'full'}"])
    assert code == 0
    assert out.count("merged in at its live scale") == 1
    assert "> :export a " + str(tmp_path / "half") + "\n'a' is merged in at its live scale 0.5, not as trained (:scale a 1 first for that)\n" in out
    code, out = transcript(session, [":scale b 0.5", ":merge a b as ab"])   # :merge says it too, once, for b only
    assert code == 0 and out.count("merged in at its live scale") == 1
    assert "'b' is merged in at its live scale 0.5, not as trained (:scale b 1 first for that)\n" in out, out


def test_merge_reports_recall_of_every_taught_question_and_names_those_lost(make_session, transcript, home):
    session = make_session()
    keys = "probes=0 anchors=0"
    code, out = transcript(session, [":dataset films", ":add What is SOH? => A hardmask.", ":add What is CMP? => Polishing.",
                                     f":train a {keys}", ":dataset music", ":add What is a fugue? => A canon.",
                                     f":train b {keys}", ":merge a b as part weights=1,0"])
    assert code == 0 and "recall 2/2" in out and "recall 1/1" in out, out
    lines = out.splitlines()
    assert lines[-3].startswith("merged a + b (cat) into 'part', saved to ")
    assert lines[-3].endswith("; recall 2/3 of the questions a and b were taught; now active"), out
    assert lines[-2] == "note: 1 taught answer does not come back verbatim from 'part': What is a fugue? (b)"
    assert lines[-1] == "  to keep every one, :train one adapter on the examples a and b were taught"
    meta = json.loads((home / "adapters" / "part" / "lorachat.json").read_text())
    assert meta["questions"] == ["What is CMP?", "What is SOH?", "What is a fugue?"]   # the gate's record: the union
    assert (meta["recall"], meta["total"]) == (2, 3)
    table = transcript(session, [":adapters"])[1].splitlines()
    (row,) = [r for r in table if r.startswith("*")]
    assert row.startswith("*  part ") and " 2/3 " in row
    alphas = {r.lstrip("* ").split()[0]: r.lstrip("* ").split()[2] for r in table[2:] if r.strip()}
    assert set(alphas) >= {"a", "b", "part"} and all(a.isdigit() for a in alphas.values()), table   # 32, not 32.0
    # answers cut by max_new_tokens are lost to the setting, not the merge: it says so, and no retraining is advised
    code, out = transcript(session, [":set max_new_tokens=1", ":merge a b as cut"])
    lines = out.splitlines()
    assert code == 0 and lines[-3].endswith("; recall 0/3 of the questions a and b were taught; now active"), out
    assert lines[-2].startswith("note: 3 taught answers do not come back verbatim from 'cut': ")
    assert lines[-1].startswith("  3 answers longer than max_new_tokens=1 (:set max_new_tokens="), out


def test_a_merge_under_bf16_keeps_its_float32_sources_exactly(make_session, transcript, home):
    """PEFT's add_weighted_adapter makes the new adapter in the base's dtype; lorachat keeps it in
    float32, as it trains, so a cat merge is the exact concatenation of its sources."""
    from safetensors.torch import load_file

    session = make_session(dtype="bfloat16")
    keys = "steps=2 until=steps probes=0 anchors=0"
    code, out = transcript(session, [":add What is Foo? => Foo is a bar.", f":train a {keys}", ":add What is Baz? => Baz.",
                                     f":train b {keys}", ":merge a b as ab"])
    assert code == 0, out
    a, b, ab = (load_file(home / "adapters" / n / "adapter_model.safetensors") for n in ("a", "b", "ab"))
    assert {t.dtype for t in ab.values()} == {torch.float32}
    for key, tensor in ab.items():
        if "lora_B" in key:
            assert torch.equal(tensor, torch.cat([a[key], b[key]], dim=1)), key


def test_a_merge_of_rslora_adapters_is_the_sum_of_their_deltas_and_answers_without_dropout(make_session, transcript):
    """PEFT's add_weighted_adapter folds each source's scaling into the new A and B (alpha = r) but keeps
    use_rslora, which would scale the sum by sqrt(r) again; and it makes the new adapter's dropout in
    training mode."""
    session = make_session(dtype="float32")
    keys = "steps=2 until=steps probes=0 anchors=0 rslora=on dropout=0.1"
    code, out = transcript(session, [":add What is Foo? => Foo is a bar.", f":train a {keys}", ":add What is Baz? => Baz.",
                                     f":train b {keys}", ":merge a b as ab"])
    assert code == 0, out
    layers = live.switch(session).layers
    for layer in layers:
        assert torch.allclose(layer.get_delta_weight("ab"), layer.get_delta_weight("a") + layer.get_delta_weight("b"),
                              atol=1e-6)
    assert layers and not any(layer.lora_dropout["ab"].training for layer in layers)
    saved = json.loads((session.home / "adapters" / "ab" / "adapter_config.json").read_text())
    assert saved["use_rslora"] is False and saved["lora_alpha"] == saved["r"]
