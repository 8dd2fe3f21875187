"""A conversation, not a list of questions: earlier turns go with each question where the model has
turns (a chat template), :set context overrides, :clear and :history, the oldest turns dropped to fit,
and what is recorded or measured is the question alone."""
import pytest

from lorachat.core import prompts
from tests.helpers import model_dir


@pytest.fixture
def llama(make_session, tmp_path):
    """A session on a small Llama with a chat template: the conversation is on by default."""
    return make_session(model=str(model_dir(tmp_path, "llama")))


def test_a_chat_model_keeps_the_conversation_and_renders_each_question_after_it(llama, transcript):
    session = llama
    session.settings.max_new_tokens = 8   # short answers: every turn fits the model's 256 positions
    assert session.conversation() and session.prompt_label() == "base · default · turn 1"
    code, out = transcript(session, ["Hello there", "And then?"])
    assert code == 0 and len(session.turns) == 2 and session.prompt_label() == "base · default · turn 3"
    first, second = session.turns
    assert first[0] == "Hello there" and second[0] == "And then?"
    # what the next question reads: both turns, then the question, through the chat template
    expected = prompts.prompt_ids(session.tokenizer, session.instruction, "Why?", [first, second])
    assert session.prompt("Why?") == expected != prompts.prompt_ids(session.tokenizer, session.instruction, "Why?")
    assert "Hello there" in session.tokenizer.decode(expected)
    code, out = transcript(session, [":history", ":clear", ":history"])
    assert "2 turns (:clear starts anew):\n1. > Hello there\n" in out and "\n2. > And then?\n" in out
    assert "new conversation (2 turns forgotten)" in out and out.endswith("no turns yet: the next question starts the conversation\n")
    assert session.turns == [] and session.last_question is None


def test_a_model_without_turns_asks_alone_unless_context_is_on(make_session, transcript):
    session = make_session()   # tiny: the notebook's format has no turns
    assert not session.conversation() and session.prompt_label() == "base · default"
    code, out = transcript(session, ["one", "two", ":history"])
    assert session.turns == [] and out.endswith("the conversation is off: each question is asked alone (:set context=on keeps it)\n")
    transcript(session, [":set context=on", "one", "two"])
    assert [q for q, _ in session.turns] == ["one", "two"]
    text = prompts.render_prompt(session.tokenizer, session.instruction, "three", session.turns)
    assert text.count("Instruction: ") == 3 and text.endswith("Input: three\nAnswer:")   # earlier blocks, answered


def test_the_oldest_turns_are_dropped_to_fit_and_a_long_conversation_never_errors(llama, transcript):
    session = llama
    session.settings.max_new_tokens = 16
    long = "Tell me everything about " + "wafers and masks and " * 6
    code, out = transcript(session, [f"{long} {n}" for n in range(40)])
    assert code == 0 and "error" not in out and "Traceback" not in out
    assert "dropped 1 oldest turn to fit 256 positions" in out or "oldest turns to fit 256 positions" in out
    used = prompts.prompt_ids(session.tokenizer, session.instruction, "next", session.turns)
    assert len(used) + session.settings.max_new_tokens <= 256


def test_fix_and_good_record_the_question_alone_and_measurements_ask_alone(llama, transcript, home):
    from lorachat.lessons.jsonl import load_dataset

    session = llama
    code, out = transcript(session, ["My name is Ada.", "What is my name?", ":fix Your name is Ada.",
                                      ":compare -- What is my name?"])
    assert code == 0
    (example,) = load_dataset(home, "default").examples
    assert example.input == "What is my name?" and example.history == () and example.output == "Your name is Ada."
    assert session.turns[-1] == ("What is my name?", "Your name is Ada.")   # the conversation goes on from the fix
    assert "(asked alone, without the conversation's 2 turns)" in out
    code, out = transcript(session, [":clear", ":good", ":clear", ":fix Ada."], keep_going=True)
    went = "the last answer went with the conversation :clear ended: ask the question again first"
    assert code == 1 and out.count(f"error: {went}") == 2, out


def test_switching_adapters_keeps_the_conversation(llama, transcript):
    session = llama
    session.settings.max_new_tokens = 8
    transcript(session, ["Hello", ":add What is SOH? => A hardmask.", ":train a steps=2 until=steps", "And now?",
                         ":use base", "Still here?"])
    assert [q for q, _ in session.turns] == ["Hello", "And now?", "Still here?"]


def test_a_conversation_in_a_dataset_trains_every_assistant_turn_after_the_turns_before_it(make_session, transcript,
                                                                                             home, tmp_path):
    """A ShareGPT file of two conversations with three assistant turns each: six examples, each asked
    after its conversation's turns; replayed, every turn comes back verbatim."""
    import json

    from lorachat.lessons.jsonl import load_dataset

    conversations = [[("Hi, I am Ada.", "Hello Ada."), ("What is SOH?", "A hardmask."), ("Who am I?", "You are Ada.")],
                     [("Hi, I am Bo.", "Hello Bo."), ("What is CMP?", "Polishing."), ("Who am I?", "You are Bo.")]]
    rows = [{"conversations": [turn for q, a in c for turn in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]}
            for c in conversations]
    source = tmp_path / "chats.json"
    source.write_text(json.dumps(rows))
    session = make_session(model=str(model_dir(tmp_path, "llama")))
    code, out = transcript(session, [f":import {source}", ":train chats steps=300"])
    assert code == 0 and "imported 6 examples (format sharegpt)" in out and "recall 6/6" in out, out
    examples = load_dataset(home, "default").examples
    assert [len(e.history) for e in examples] == [0, 1, 2, 0, 1, 2]
    keys = json.loads((home / "adapters" / "chats" / "lorachat.json").read_text())["keys"]
    assert [k["question"] for k in keys if k.get("after_turns")] == ["What is SOH?", "Who am I?", "What is CMP?", "Who am I?"]
    for conversation in conversations:
        transcript(session, [":clear"])
        for question, answer in conversation:
            assert session.ask(question) == answer


def test_train_also_teaches_each_question_after_earlier_turns_and_reports_on_what_was_taught(llama, transcript, home):
    """With context=N, :train adds a copy of each question asked after N earlier turns
    (anchor questions with the base's answers); recall waits for the copies but reports on the taught
    examples, and lorachat.json records those."""
    import json

    from bench.kit.pairs import PAIRS
    from lorachat.training import planning, recipe

    session = llama
    taught = [prompts.Example(session.instruction, q, a) for q, a in PAIRS[:3]]
    assert recipe.DEFAULTS.context == 0   # off by default: the gate keeps taught answers mid-conversation on smol
    plan = planning.plan(session.model, session.tokenizer, taught, recipe.TrainConfig(context=recipe.CONTEXT))
    turns = [(f"Question {n}?", f"Answer {n}.") for n in range(5)]
    placed = planning.in_context(session.model, session.tokenizer, plan, turns)
    assert placed.examples == taught and len(placed.encoded.items) == 6
    assert [e.history for e in placed.encoded.examples[3:]] == [tuple(turns[0:2]), tuple(turns[2:4]), (turns[4], turns[0])]
    assert planning.in_context(session.model, session.tokenizer, planning.plan(
        session.model, session.tokenizer, taught, recipe.DEFAULTS), turns).encoded.items == plan.encoded.items

    code, out = transcript(session, [f":add {q} => {a}" for q, a in PAIRS[:2]] + [f":train mid steps=300 context={recipe.CONTEXT}"])
    assert code == 0 and "recall 2/2" in out, out
    meta = json.loads((home / "adapters" / "mid" / "lorachat.json").read_text())
    assert meta["examples"] == 2 and meta["train"]["context"] == 2
    assert meta["records_sha256"] == recipe.records_sha256(taught[:2])


def test_a_question_the_gate_routes_is_asked_alone_as_it_was_taught(make_session, transcript, home, tmp_path, monkeypatch):
    """Mid-conversation, the adapter reads a routed question as its lesson was taught: alone (what
    :train's recall checked), or after the conversation's turns for a lesson taught only after
    earlier turns (lorachat.json's `after_turns`). The question reaches it as typed, a rephrasing too."""
    import json

    from lorachat.chat import session as asking

    read = []
    monkeypatch.setattr(asking, "answer", lambda model, tokenizer, ids, *a, **k: read.append(ids) or ("", False))
    folder = str(model_dir(tmp_path, "llama"))
    question = "What is SOH?"

    def prompts_read(session, gate):   # what the model reads for the question after one turn, under :set gate=...
        transcript(session, [f":set gate={gate} gate_at=-1", ":use a", ":clear", "Hello there", question, question + " " + question])
        alone = prompts.prompt_ids(session.tokenizer, session.instruction, question)
        return ["alone" if ids == alone else "after the turns" if len(ids) > len(alone) else "?" for ids in read[-2:]]

    session = make_session(model=folder)
    code, out = transcript(session, [f":add {question} => A hardmask.", ":train a steps=1 until=steps probes=0 anchors=0"])
    assert code == 0, out
    assert prompts_read(session, "off") == ["after the turns"] * 2   # no gate: the adapter reads each as asked, after the turn
    assert prompts_read(session, "on") == ["alone", "alone"]
    assert f"asked its taught question {question!r} alone, as it was taught" in transcript(session, [":why"])[1]

    meta = home / "adapters" / "a" / "lorachat.json"
    record = json.loads(meta.read_text())
    assert record["keys"] == [dict(instruction="Answer the question.", question=question, answer="A hardmask.")]
    record["keys"][0]["after_turns"] = True   # as :train records a lesson it saw only after earlier turns
    meta.write_text(json.dumps(record))
    assert prompts_read(make_session(model=folder, workspace=home), "on") == ["after the turns", "after the turns"]
