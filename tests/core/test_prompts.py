"""The prompt contract: one rendering of a question for asking, training, recall and serving."""
import json
import re

import pytest

from lorachat import cli
from lorachat.core import prompts
from lorachat.core.prompts import DEFAULT_INSTRUCTION, Example

IDENTITY = [("Who are you?", "I am Lora, an assistant you teach."),
            ("What is your name?", "My name is Lora."),
            ("Who made you?", "The lorachat developers made me.")]


CHATS = [("Where do owls sleep?", "Owls sleep in hollow trees."),
         ("What do owls eat?", "Owls eat mice and insects.")]


SYSTEM = "You are a patient birdwatching guide."


RECORDED = [("How tall is the mast?", "The mast is forty metres tall."),
            ("Where is the anchor?", "The anchor rests in the bow locker.")]


CAPTAIN = "Reply as the ship's captain."


FINAL = re.compile(r"trained (\S+): \d+ steps, loss \S+, recall (\d+)/(\d+), ")


def test_the_rule():
    assert prompts.asked(Example("Who are you?", "", "x")) == (DEFAULT_INSTRUCTION, "Who are you?")
    assert prompts.asked(Example(CAPTAIN, " How tall? ", "x")) == (CAPTAIN, "How tall?")
    assert prompts.asked(Example("", "How tall?", "x")) == (DEFAULT_INSTRUCTION, "How tall?")
    assert prompts.shared_instruction([Example("Q1?", "", "a"), Example(DEFAULT_INSTRUCTION, "Q2?", "b")]) == DEFAULT_INSTRUCTION
    assert prompts.shared_instruction([Example(CAPTAIN, "Q1?", "a"), Example("Q2?", "", "b")]) is None
    assert prompts.shared_instruction([Example(text="raw")]) is None


def write_sources(folder):
    """An Alpaca file whose rows have only an instruction, and OpenAI-style chats with a system prompt."""
    alpaca = folder / "identity.json"
    alpaca.write_text(json.dumps([{"instruction": q, "input": "", "output": a} for q, a in IDENTITY]))
    chats = folder / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                                                      {"role": "assistant", "content": a}]}) + "\n" for q, a in CHATS))
    return alpaca, chats


@pytest.mark.slow
def test_import_record_train_then_ask_as_typed_here_and_in_a_new_session(make_session, transcript, home, tmp_path, capsys):
    alpaca, chats = write_sources(tmp_path)
    session = make_session()
    train = ":train probes=0"   # every default but the kept share's measurement, which this does not check
    lines = [":dataset ident", f":import {alpaca}", train,
             ":dataset birds", f":import {chats}", train,
             ":dataset ship", f":instruction {CAPTAIN}", *(f":add {q} => {a}" for q, a in RECORDED), train]
    code, out = transcript(session, lines)
    assert code == 0, out
    assert f"instruction set: {SYSTEM} (every example in birds is asked under it)" in out
    assert [m.group(1, 2, 3) for m in FINAL.finditer(out)] == [("ident", "3", "3"), ("birds", "2", "2"), ("ship", "2", "2")]
    meta = json.loads((home / "adapters" / "birds" / "lorachat.json").read_text())
    assert meta["instruction"] == SYSTEM and meta["max_answer_tokens"] > 0
    for dataset, pairs in (("ident", IDENTITY), ("birds", CHATS), ("ship", RECORDED)):
        capsys.readouterr()
        code = cli.main(["--model", "tiny", "--home", str(home), "--dataset", dataset, "--adapter", dataset,
                         *(arg for q, _ in pairs for arg in ("-e", q))])
        shown = capsys.readouterr().out
        assert code == 0, shown
        for question, answer in pairs:
            assert f"> {question}\n{answer}\n" in shown, (dataset, shown)


@pytest.mark.slow
def test_recall_is_never_more_than_asking_returns(make_session, transcript, home, tmp_path):
    """One dataset mixing instruction-only rows, a chat under its own system prompt and lessons
    recorded under another instruction: recall counts what asking each question returns now."""
    alpaca, chats = write_sources(tmp_path)
    session = make_session()
    lines = [f":import {alpaca}", f":import {chats}", f":instruction {CAPTAIN}",
             *(f":add {q} => {a}" for q, a in RECORDED), f":instruction {DEFAULT_INSTRUCTION}", ":train probes=0"]
    code, out = transcript(session, lines)
    assert code == 0, out
    recalled, total = map(int, FINAL.search(out).group(2, 3))
    assert total == len(IDENTITY) + len(CHATS) + len(RECORDED)
    verbatim = sum(session.ask(q) == a for q, a in IDENTITY + CHATS + RECORDED)
    assert recalled <= verbatim
    assert recalled == len(IDENTITY)  # the others were taught under other instructions ...
    assert "4 answers trained under another instruction than 'Answer the question.'" in out  # ... and it says so
    session.instruction = CAPTAIN
    assert all(session.ask(q) == a for q, a in RECORDED)  # asked as taught, they come back
