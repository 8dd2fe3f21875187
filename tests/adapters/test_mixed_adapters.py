"""Several adapters at once, on every architecture: :compare's mixed batch (and its fallback), a
plain-PEFT adapter with modules_to_save beside others, :merge's sources, names PEFT cannot hold."""
import pytest
import torch

from lorachat.adapters import live
from tests.helpers import plain_peft

QUESTION = "What is SOH?"


def test_compare_on_opt_fc1_answers_one_at_a_time_and_the_session_goes_on(make_session, transcript):
    """OPT flattens (batch, seq) before fc1: PEFT's mixed batch cannot work there."""
    from tests.helpers import shelve

    session = make_session()
    shelve(session, ["a", "b"], targets=("fc1",))
    transcript(session, [":set max_new_tokens=12"])
    code, out = transcript(session, [f":compare a b -- {QUESTION}"])
    assert code == 0, out
    blocks = out.split("\n")[1:-1]
    assert blocks[0::2] == ["[base]", "[a]", "[b]"]
    assert session.active_adapter is None
    for name, answer in zip(["base", "a", "b"], blocks[1::2]):
        assert transcript(session, [f":use {name}", QUESTION])[1].splitlines()[-1] == answer


def test_a_failed_mixed_batch_leaves_no_hook_behind(make_session):
    """PEFT removes its adapter_names hooks only after a forward that succeeded."""
    from tests.helpers import shelve

    session = make_session()
    shelve(session, ["a"], targets=("fc1",))
    live.use(session, "a")
    current = live.switch(session)
    before = {layer: len(layer._forward_pre_hooks) for layer in current.layers}
    ids = torch.tensor([[2, 50, 60, 70]] * 2)
    with pytest.raises(ValueError, match="adapter_names"):
        with current.unmerged(enabled=True), torch.inference_mode():
            session.model.generate(input_ids=ids, adapter_names=["a", "__base__"], max_new_tokens=2)
    assert {layer: len(layer._forward_pre_hooks) for layer in current.layers} == before
    with torch.inference_mode():
        session.model.generate(input_ids=ids[:1], max_new_tokens=2)  # no leftover hook refuses it


def peft_logits(directory=None):
    """Logits of PEFT's own load of `directory` on a fresh base (None: the base alone)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorachat.models.tiny import ensure_tiny

    model = AutoModelForCausalLM.from_pretrained(ensure_tiny())
    if directory is not None:
        model = PeftModel.from_pretrained(model, directory)
    with torch.no_grad():
        return model.eval()(input_ids=torch.tensor([[2, 50, 60, 70, 80, 90]])).logits


@pytest.mark.parametrize("order", [("plain", "mts"), ("mts", "plain")])
def test_a_modules_to_save_adapter_loads_beside_another_and_the_base_stays_the_base(make_session, transcript, home, order):
    from tests.helpers import logits

    plain_peft(home / "adapters" / "plain", 1)
    plain_peft(home / "adapters" / "mts", 2, modules_to_save=["lm_head"])
    session = make_session(dtype="float32")   # against plain PEFT in float32
    expected = {name: peft_logits(home / "adapters" / name) for name in order}
    for name in [*order, *order]:
        code, out = transcript(session, [f":use {name}"])
        assert code == 0 and "Traceback" not in out, out
        assert torch.allclose(logits(session), expected[name], atol=1e-5), name
    transcript(session, [":use base"])
    assert torch.equal(logits(session), peft_logits())
    out = transcript(session, [":set max_loaded=1", ":use mts", ":use base", ":delete plain yes", ":delete mts yes", ":adapters"])[1]
    assert "no adapters yet" in out
    assert torch.equal(logits(session), peft_logits())  # unloading put the base's own lm_head back


def test_merge_refuses_a_dora_source_as_export_does(make_session, transcript, home):
    from tests.helpers import shelve

    session = make_session()
    shelve(session, ["a"])
    plain_peft(home / "adapters" / "dora", 1, use_dora=True)
    code, out = transcript(session, [":merge a dora as both", ":export dora out"], keep_going=True)
    assert ("error: adapter 'dora' is not plain LoRA (DoRA or another variant): :merge sums plain LoRA deltas only"
            in out.splitlines()), out
    assert "error: adapter 'dora' is not plain LoRA (DoRA or another variant): export merges plain LoRA only" in out
    assert sorted(p.name for p in (home / "adapters").iterdir()) == ["a", "dora"]
    assert "both" not in live.loaded_names(session)


def test_adapter_names_say_what_is_allowed_and_unusable_folders_say_why(shelved, transcript, home):
    import shutil

    shutil.copytree(home / "adapters" / "a", home / "adapters" / "sp ace")
    shutil.copytree(home / "adapters" / "a", home / "adapters" / "v1.2")
    code, out = transcript(shelved, [":rename a ../evil", ":adapters"], keep_going=True)
    assert "error: invalid adapter name '../evil': use letters, digits, '_' and '-'\n" in out
    assert "note: adapters/sp ace cannot be used (invalid adapter name 'sp ace': use letters, digits, '_' and '-'): rename its folder" in out
    assert "note: adapters/v1.2 cannot be used (adapter name 'v1.2' cannot contain '.'" in out


def test_an_adapter_with_lora_biases_answers_and_exports_with_them(make_session, transcript, home, tmp_path):
    """PEFT's lora_bias adds B's bias; lorachat's own merge for decoding, and the export, add weights only."""
    from transformers import AutoModelForCausalLM

    from tests.helpers import logits

    plain_peft(home / "adapters" / "lb", 3, lora_bias=True)
    session = make_session(dtype="float32")
    expected = peft_logits(home / "adapters" / "lb")
    code, out = transcript(session, [":use lb", f":export lb {tmp_path / 'out'}"])
    assert code == 0, out
    with torch.inference_mode():   # as an answer is decoded: merged where lorachat can merge
        assert torch.allclose(logits(session), expected, atol=1e-5)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.allclose(exported(input_ids=torch.tensor([[2, 50, 60, 70, 80, 90]])).logits, expected, atol=1e-4)
