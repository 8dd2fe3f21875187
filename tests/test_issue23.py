"""Issue 23: defects found on OPT, Llama and GPT-2 shapes, in adapters made elsewhere, under
torchrun and at a closed pipe; one test (or a few) per defect, each failing before its fix."""
import json

import pytest
import torch

from lorachat import adapters

QUESTION = "What is SOH?"


# 1 -----------------------------------------------------------------------------------------------

def test_compare_on_opt_fc1_answers_one_at_a_time_and_the_session_goes_on(make_session, transcript):
    """OPT flattens (batch, seq) before fc1: PEFT's mixed batch cannot work there."""
    from test_adapters import shelve

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
    from test_adapters import shelve

    session = make_session()
    shelve(session, ["a"], targets=("fc1",))
    adapters.use(session, "a")
    current = adapters.switch(session)
    before = {layer: len(layer._forward_pre_hooks) for layer in current.layers}
    ids = torch.tensor([[2, 50, 60, 70]] * 2)
    with pytest.raises(ValueError, match="adapter_names"):
        with current.unmerged(enabled=True), torch.inference_mode():
            session.model.generate(input_ids=ids, adapter_names=["a", "__base__"], max_new_tokens=2)
    assert {layer: len(layer._forward_pre_hooks) for layer in current.layers} == before
    with torch.inference_mode():
        session.model.generate(input_ids=ids[:1], max_new_tokens=2)  # no leftover hook refuses it
