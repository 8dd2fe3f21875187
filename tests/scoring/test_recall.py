"""Recall as asking returns it: the generation settings, the stop rule, long examples, :eval at scale."""
import json
import re

import pytest

from lorachat.core import prompts
from lorachat.core.prompts import DEFAULT_INSTRUCTION, IGNORE, Example
from lorachat.scoring import batches, recall
from tests.helpers import write_dataset

PAIRS = [("What is SOH?", "A hardmask."), ("What is CMP?", "Polishing the wafer flat.")]


def test_repetition_penalty_is_applied_as_generate_applies_it(make_session):
    """Teacher forcing with the penalty picks, at every position, what generate(repetition_penalty)
    picks: the penalised greedy continuation is known, and it differs from the plain one. In float32:
    in bf16 one pass over the whole answer and generate's token-by-token passes round differently, which
    on tiny's random weights flips near-ties (a taught answer's margins are far wider)."""
    import torch

    session = make_session(dtype="float32")
    model, tok = session.model, session.tokenizer
    prompt = prompts.prompt_ids(tok, DEFAULT_INSTRUCTION, "Tell me about wafers and wafers and wafers.")
    ids = torch.tensor([prompt])
    answers = {}
    for penalty in (1.0, 1.5):
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                             repetition_penalty=penalty, pad_token_id=tok.pad_token_id, eos_token_id=None)
        answers[penalty] = out[0, len(prompt):].tolist()
    assert answers[1.0] != answers[1.5]
    for penalty, answer in answers.items():
        item = (prompt + answer, [IGNORE] * len(prompt) + answer)
        for asked_with in (1.0, 1.5):
            check = recall.Recall(tok, [Example(text="x")], [item], recall.Asking(repetition_penalty=asked_with))
            assert check._known(model, [item]) == [penalty == asked_with], (penalty, asked_with)


def test_what_asking_cannot_return_is_not_recalled_and_says_why(make_session):
    session = make_session()
    tok = session.tokenizer
    examples = [Example(DEFAULT_INSTRUCTION, "Q one?", "A short answer."),
                Example(DEFAULT_INSTRUCTION, "Q two?", "First line.\nInstruction: a second block."),
                Example(DEFAULT_INSTRUCTION, "Q three?", " ".join(["word"] * 40)),
                Example("Reply as a pirate.", "Q four?", "Arr."),
                Example(text="raw text is trained, not asked")]
    items = batches.encode(tok, examples, 512).items
    check = recall.Recall(tok, examples, items, recall.Asking(max_new_tokens=20))
    assert check.questions == [0, 1, 2, 3]
    assert [check.why[i] for i in range(4)] == [None, recall.SHOWN, recall.LONG, None]
    assert check.asked[3] is not items[3] and check.asked[0] is items[0]  # asked under the session's instruction
    reasons = check.reasons()
    assert any(re.match(r"1 answer longer than max_new_tokens=20 \(:set max_new_tokens=\d+ to get them whole\)", r) for r in reasons)
    assert any(r.startswith("1 answer cut when shown") for r in reasons)


def test_long_examples_are_left_out_with_one_line_and_import_warns(make_session, transcript, home, tmp_path):
    long = " ".join(["The engineer reads the answer every day."] * 80)   # far beyond the tiny model's 512 positions
    source = tmp_path / "rows.jsonl"
    rows = [{"instruction": DEFAULT_INSTRUCTION, "input": q, "output": a} for q, a in PAIRS]
    rows.append({"instruction": "Summarise this.", "input": long, "output": "A summary."})
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    session = make_session()
    code, out = transcript(session, [f":import {source}", ":train until=steps steps=2", ":eval limit=2"])
    assert code == 0, out
    assert "warning: 1 of these examples are longer than the model's 512 positions; :train leaves them out" in out
    assert re.search(r"trained default: 2 steps, loss \S+, recall \d/2, kept \d+% of base answers, \S+ s — now active "
                     r"\(1 example longer than the model's 512 positions skipped\)", out), out
    assert "dataset 'default' (2 examples)" in out
    meta = json.loads((home / "adapters" / "default" / "lorachat.json").read_text())
    assert meta["skipped"] == 1 and meta["examples"] == 2 and meta["total"] == 2


@pytest.mark.slow
def test_eval_recall_is_what_asking_returns(make_session, transcript, home):
    write_dataset(home, "qa", PAIRS)
    session = make_session()
    code, out = transcript(session, [":dataset qa", ":train probes=0"])   # the kept share is not what this checks
    assert code == 0 and "recall 2/2" in out, out
    shown = []
    for setting in ([":set max_new_tokens=2"], [":set max_new_tokens=64", ":instruction Be brief."],
                    [f":instruction {DEFAULT_INSTRUCTION}"]):
        code, out = transcript(session, [*setting, ":eval"])
        assert code == 0, out
        loss, recalled = re.search(r"^qa\s+(\d+\.\d+)\s+(\d)/2\s", out, re.M).groups()
        shown.append(int(recalled))
        assert int(recalled) == sum(session.ask(q) == a for q, a in PAIRS), setting
    # answers cut short: none; asked under another instruction: not all (what asking returns, counted
    # above); asked as taught: all
    assert shown[0] == 0 and shown[1] < 2 and shown[2] == 2
    taught = [Example(DEFAULT_INSTRUCTION, q, a) for q, a in PAIRS]
    assert float(loss) == pytest.approx(batches.answer_loss(session.model, session.tokenizer, taught), abs=1e-4)


def test_evaluating_restores_each_module_and_walks_nothing_in_eval_mode():
    """batches.evaluating: eval mode inside; afterwards each module in the mode it had (a model in
    train mode with one submodule left in eval, as PEFT leaves a frozen part, comes back so); and a
    model already in eval mode is not walked by train()/eval() at all (the gate's decisions pay it
    per question)."""
    import torch

    calls = []

    class Counted(torch.nn.Sequential):
        def train(self, mode=True):
            calls.append(mode)
            return super().train(mode)

    model = Counted(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5), torch.nn.Linear(2, 2))
    model.train()
    model[2].eval()
    with batches.evaluating(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, True, False]
    model.eval()
    calls.clear()
    with batches.evaluating(model):
        assert not any(m.training for m in model.modules())
    assert calls == [] and not any(m.training for m in model.modules())
    with pytest.raises(ValueError):          # restored when the block raises too
        model.train()
        with batches.evaluating(model):
            raise ValueError
    assert all(m.training for m in model.modules())
