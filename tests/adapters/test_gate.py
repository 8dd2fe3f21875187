"""The ask-time gate (adapters/gate.py, routing/) on tiny, turned on by hand (auto leaves it off
under 50M parameters): an adapter answers only questions that ask what lorachat.json says it was
taught, and then as that taught question; the base answers the rest. What the decisions are worth
is measured on smol (tests/models/test_smol.py, bench/research/routing.py); here, the machinery."""
import json

from lorachat.adapters import paths
from lorachat.chat.commands import conversation

TAUGHT, ANSWER = "What is SOH?", "A film."
OTHER = "Who wrote Hamlet?"
SAME_WORDS = "What is SOH? What is SOH?"   # every word of the taught question: covered whatever the weights


def answer_of(transcript, session, lines) -> str:
    return transcript(session, lines)[1].rstrip("\n").splitlines()[-1]


def teach(session, name, keys):
    """Record in adapter `name`'s lorachat.json what it was taught (what :train writes)."""
    meta = paths.adapter_path(session, name) / "lorachat.json"
    record = json.loads(meta.read_text())
    record["keys"] = [dict(instruction="Answer the question.", question=q, answer=a) for q, a in keys]
    record["questions"] = sorted(q for q, _ in keys)
    meta.write_text(json.dumps(record))


def test_the_gate_leaves_other_questions_to_the_base_and_measures_as_it_asks(shelved, transcript, make_session):
    session = shelved
    teach(session, "a", [(TAUGHT, ANSWER)])
    transcript(session, [":set max_new_tokens=12"])
    base = {q: answer_of(transcript, session, [":use base", q]) for q in (TAUGHT, OTHER, SAME_WORDS)}
    own = {q: answer_of(transcript, session, [":use a", q]) for q in (TAUGHT, OTHER, SAME_WORDS)}   # auto: off on tiny
    assert own[OTHER] != base[OTHER], "the random adapter must change the answer for the gate to show"
    assert own[SAME_WORDS] != own[TAUGHT]
    assert "off (auto: a model under 50M parameters)" in transcript(session, [":info"])[1]

    transcript(session, [":set gate=on", ":set gate_at=2"])   # nothing but the taught question itself passes
    assert answer_of(transcript, session, [OTHER]) == base[OTHER]
    assert answer_of(transcript, session, [SAME_WORDS]) == base[SAME_WORDS]
    assert f"  asks what {TAUGHT!r} asks? :fix {ANSWER}  (it routes from then on, no training; if it asks something " \
        "else, the base was right)" in transcript(session, [":why"])[1]
    assert answer_of(transcript, session, [TAUGHT]) == own[TAUGHT]   # its own key, no check
    assert "on at 2: 'a' answers questions that ask what its 1 taught answer answers, the base the rest" in \
        transcript(session, [":info"])[1]
    code, out = transcript(session, [f":compare a b -- {OTHER}"])
    assert code == 0 and "the gate leaves this question to the base for a (it asks nothing it was taught; :why says why, " \
        ":set gate=off shows its own answer)\n" in out, out
    lines = out.rstrip("\n").splitlines()
    assert lines[lines.index("[a]") + 1] == base[OTHER]
    b_own = lines[lines.index("[b]") + 1]   # b has no record of what it was taught: it answers everything
    assert answer_of(transcript, session, [":use b", OTHER]) == b_own != base[OTHER]

    # a question that covers the taught one and passes the check is answered as the taught question
    transcript(session, [":use a", ":set gate_at=-1"])
    assert answer_of(transcript, session, [SAME_WORDS]) == own[TAUGHT]
    code, out = transcript(session, [":why"])
    assert code == 0 and f"was answered by adapter 'a', asked its taught question {TAUGHT!r}" in out, out
    assert f"nearest taught question: {TAUGHT!r}, coverage 1.00" in out
    code, out = transcript(session, [f":compare a -- {SAME_WORDS}"])
    assert code == 0 and f"a answers it as its taught question {TAUGHT!r}" in out
    assert out.rstrip("\n").splitlines()[-1] == own[TAUGHT]

    # :eval: at gate_at=2 no probe reaches a, so it keeps every base answer; without the gate it does not
    transcript(session, [f":add {TAUGHT} => {ANSWER}", f":add {OTHER} => Shakespeare.", ":set gate_at=2"])
    kept = {}
    for setting in ("on", "off"):
        out = transcript(session, [f":set gate={setting}", ":eval a builtin=8"])[1]
        kept[setting] = next(line.split()[3] for line in out.splitlines() if line.startswith("a "))
        assert "error" not in out, out
    assert kept["on"] == "100.0%" and kept["off"] != "100.0%", kept

    later = make_session(workspace=session.home)   # a new session reads the keys from lorachat.json
    transcript(later, [":set max_new_tokens=12", ":set gate=on", ":set gate_at=2"])
    assert answer_of(transcript, later, [":use a", OTHER]) == base[OTHER]
    assert answer_of(transcript, later, [TAUGHT]) == own[TAUGHT]
    code, out = transcript(later, [OTHER, ":why"])
    assert f"{OTHER!r} was answered by the base, not adapter 'a': it asks nothing 'a' was taught" in out
    # what :why offers for a question that fell short of the check does what it says
    assert answer_of(transcript, later, [SAME_WORDS]) == base[SAME_WORDS]
    code, out = transcript(later, [":why", f":fix {ANSWER}"])
    assert code == 0 and f":fix {ANSWER}  (it routes" in out and "it now answers this question too" in out, out
    assert answer_of(transcript, later, [SAME_WORDS]) == own[TAUGHT]


def test_why_says_when_the_gate_does_not_decide(shelved, transcript):
    code, out = transcript(shelved, [":why"])
    assert code == 1 and "error: :why: no question asked yet in this session" in out
    out = transcript(shelved, [OTHER, ":why"])[1]
    assert f"{OTHER!r} was answered by the base: no adapter was active" in out
    out = transcript(shelved, [":use b", OTHER, ":why"])[1]
    assert "was answered by adapter 'b' as asked: the gate is off, so it answers every question" in out
    out = transcript(shelved, [":set gate=on", OTHER, ":why"])[1]
    assert "adapter 'b' as asked: 'b' has no record of what it was taught, so it answers every question" in out


def test_a_phrasing_recorded_for_a_taught_answer_routes_without_training(shelved, transcript, make_session):
    """:add of another question with an answer the active adapter was taught makes it a key of that
    answer: asked, the adapter answers it as the taught question, at once and in later sessions."""
    session = shelved
    teach(session, "a", [(TAUGHT, ANSWER)])
    phrasing = "Tell me what SOH is."
    transcript(session, [":set max_new_tokens=12", ":use a"])
    own = answer_of(transcript, session, [TAUGHT])
    transcript(session, [":set gate=on", ":set gate_at=2"])
    before = answer_of(transcript, session, [phrasing])
    assert before != own   # the base's: nothing covers it at gate_at=2
    code, out = transcript(session, [f":add {phrasing} => {ANSWER}"])
    assert code == 0 and "'a' was taught this answer: it now answers this question too" in out, out
    assert answer_of(transcript, session, [phrasing]) == own
    keys = json.loads((paths.adapter_path(session, "a") / "lorachat.json").read_text())["keys"]
    assert keys[-1] == dict(instruction="Answer the question.", question=phrasing, answer=ANSWER, added=True)
    code, out = transcript(session, [f":add {OTHER} => Someone else."])   # not a taught answer: only recorded
    assert code == 0 and "now answers" not in out

    later = make_session(workspace=session.home)
    transcript(later, [":set max_new_tokens=12", ":set gate=on", ":set gate_at=2", ":use a"])
    assert answer_of(transcript, later, [phrasing]) == own

    # :undo of the example takes the phrasing back too (only that one: :undo of a plain example says nothing more)
    code, out = transcript(session, [":undo"])
    assert code == 0 and "no longer answers it" not in out, out
    code, out = transcript(session, [":undo"])
    assert code == 0 and f"removed from default (0 examples left): {phrasing} => {ANSWER}\n" \
        "and 'a' no longer answers it as a phrasing of its taught answer" in out, out
    assert json.loads((paths.adapter_path(session, "a") / "lorachat.json").read_text())["keys"] == \
        [dict(instruction="Answer the question.", question=TAUGHT, answer=ANSWER)]
    assert answer_of(transcript, session, [phrasing]) == before

    # made again, then in a later session, where :undo cannot reach it, :unroute takes the phrasing back
    transcript(session, [f":add {phrasing} => {ANSWER}"])
    later = make_session(workspace=session.home)
    code, out = transcript(later, [":set max_new_tokens=12", ":set gate=on", ":set gate_at=2", ":use a", phrasing,
                                   ":unroute", phrasing])
    assert code == 0 and f"{phrasing!r} is no longer a phrasing of what 'a' was taught" in out, out
    assert out.rstrip("\n").splitlines()[-1] == before
    assert [k["question"] for k in json.loads((paths.adapter_path(session, "a") / "lorachat.json").read_text())["keys"]] == [TAUGHT]


def test_the_gates_background_is_made_once_per_checkpoint_and_kept_on_disk(shelved, transcript, make_session, monkeypatch):
    """The base's background (the mean and spread routing/reading takes off every token) is made by
    the first session over these weight files and read by later ones; a damaged file is made again."""
    import torch

    from lorachat.adapters import base_cache, gate
    from lorachat.routing import reading

    path = base_cache.path(shelved, "gate", [gate.BACKGROUND_VERSION, reading.LAYER, reading.BACKGROUND], ".safetensors")
    path.unlink(missing_ok=True)   # the cache folder is this test run's, shared by its tests
    made, real = [], reading.background
    monkeypatch.setattr(reading, "background", lambda *args: made.append(1) or real(*args))
    teach(shelved, "a", [(TAUGHT, ANSWER)])
    lines = [":set max_new_tokens=4", ":set gate=on", ":use a", SAME_WORDS]
    answers, spreads = [], []
    for session in (shelved, make_session(workspace=shelved.home), None):
        if session is None:
            path.write_bytes(b"not a safetensors file")
            session = make_session(workspace=shelved.home)
        answers.append(answer_of(transcript, session, lines))
        spreads.append(gate._state(session)["background"].spread)
    assert made == [1, 1] and path.is_file()   # made, read, made again over the damaged file
    assert torch.equal(spreads[0], spreads[1]) and torch.allclose(spreads[0], spreads[2])
    assert answers[0] == answers[1] == answers[2]


def test_reading_stops_early_and_matches_the_full_forward_pass(tmp_path):
    """routing.reading.states gives the hidden states the full forward pass gives after that
    layer, on OPT, Llama and GPT-2, from a batch of questions of different lengths."""
    import torch

    from lorachat.models.loader import load_model
    from lorachat.routing import reading
    from tests.helpers import model_dir

    texts = ["What is SOH?", "Who wrote Hamlet, and when did he write it?"]
    for folder in (model_dir(tmp_path, arch, layers=3) for arch in ("opt", "llama", "gpt2")):
        loaded = load_model(str(folder), device="cpu", dtype="float32")
        model, tokenizer = loaded.model, loaded.tokenizer
        got = reading.states(model, tokenizer, texts, layer=1)
        for text, states in zip(texts, got):
            with torch.no_grad():
                full = model(input_ids=torch.tensor([tokenizer(text)["input_ids"]]), output_hidden_states=True)
            assert torch.allclose(states, full.hidden_states[1][0].float(), atol=1e-5), folder


def test_eval_with_the_gate_off_measures_what_travels_and_the_export_says_it(shelved, transcript, tmp_path):
    """:eval NAME gate=off: every question the adapter's, as :export and vLLM serve it; the answer
    length joins kept and agree, all three recorded in lorachat.json, and :export says them."""
    session = shelved
    transcript(session, [":add What is SOH? => A film.", ":use a"])
    code, out = transcript(session, [":eval a builtin=8 gate=off"])
    assert code == 0 and "every question the adapter's (gate=off)" in out, out
    row = next(line.split() for line in out.splitlines() if line.startswith("a "))
    kept, agree, length, whole = row[3], row[4], row[5], row[6]
    assert length.endswith("×") and kept != "100.0%"
    base_row = next(line.split() for line in out.splitlines() if line.startswith("base "))
    assert base_row[5:7] == ["1.00×", "100.0%"], base_row
    ungated = json.loads((paths.adapter_path(session, "a") / "lorachat.json").read_text())["ungated"]
    assert ungated["probes"] == 8 and f"{100 * ungated['kept']:.1f}%" == kept and f"{ungated['length']:.2f}×" == length
    assert f"{100 * ungated['agree']:.1f}%" == agree and f"{100 * ungated['unchanged']:.1f}%" == whole
    # whole answers unchanged can be no more than the answers whose first tokens are unchanged (8 of the 32)
    assert ungated["answers"] == 32 and ungated["unchanged"] * 32 <= 24 + ungated["kept"] * 8, ungated
    code, out = transcript(session, [f":export a {tmp_path / 'out'}"])
    assert code == 0 and f"(ungated: kept {ungated['kept']:.1%} of 8 probes exactly" in out, out
    assert session.settings.gate == "auto"   # :eval's key is for that measurement only
    # measured at a live :scale, the figures are that scale's, kept beside the as-trained ones (never replacing them)
    code, out = transcript(session, [":scale a 0.5", ":eval a builtin=8 gate=off", f":export a {tmp_path / 'half'}"])
    meta = json.loads((paths.adapter_path(session, "a") / "lorachat.json").read_text())
    halved = meta["ungated_scaled"]["0.5"]
    assert code == 0 and halved["scale"] == 0.5 and f"(ungated: kept {halved['kept']:.1%} of 8 probes" in out, out
    assert meta["ungated"] == ungated
    code, out = transcript(session, [":scale a 1", f":export a {tmp_path / 'whole'}", ":scale a 0.8", f":export a {tmp_path / 'most'}"])
    assert code == 0 and f"(ungated: kept {ungated['kept']:.1%} of 8 probes exactly" in out, out
    assert ("(ungated figures not measured at scale 0.8, the one it leaves at: :eval a gate=off; "
            "lorachat.json's are at scale 1)") in out, out


def test_questions_decided_together_are_decided_as_each_alone(shelved, transcript):
    """gate.decide_each (:eval's and :train's probes, read CHUNK to a forward pass) decides every
    question as deciding it alone does: the same key, the same question asked, the same figures."""
    from lorachat.adapters import gate
    from lorachat.scoring import locality

    session = shelved
    teach(session, "a", [(TAUGHT, ANSWER), ("What is SiON?", "SiON is silicon oxynitride.")])
    transcript(session, [":use a", ":set gate=on", ":set gate_at=-1"])   # every shortlisted question passes
    questions = [TAUGHT, SAME_WORDS, OTHER, "  What is SiON?  ", *locality.builtin(locality.PROBES)[:20]]
    together = gate.decide_each(session, "a", questions)
    alone = [gate.decide(session, "a", q) for q in questions]
    assert [d.asks for d in together] == [d.asks for d in alone]
    assert together[1].key is not None and together[3].asks == "What is SiON?"
    for a, b in zip(together, alone):
        assert (a.nearest, a.checked) == (b.nearest, b.checked)
        # to the rounding of a batch: a padded row's states and log P move in the last bits (bf16 here)
        assert abs(a.coverage - b.coverage) < 5e-3 and (a.share is None) == (b.share is None)
        assert a.share is None or abs(a.share - b.share) < 0.02


def test_unroute_sends_the_last_question_back_to_the_base_for_good(shelved, transcript, make_session, monkeypatch):
    """:unroute (issue 35): a question the adapter answered goes to the base from then on, kept in
    lorachat.json as a not key (a later session reads it, :merge unites it, an adapter trained while it
    is active on the same answer keeps it, :add of it with the taught answer makes it a phrasing
    again); a taught question or a question the base answered is one line."""
    session = shelved
    teach(session, "a", [(TAUGHT, ANSWER)])
    teach(session, "b", [("What is SiON?", "SiON is silicon oxynitride.")])
    base = answer_of(transcript, session, [":set max_new_tokens=12", ":use base", SAME_WORDS])
    code, out = transcript(session, [":unroute"], keep_going=True)
    assert code == 1 and "error: :unroute: no adapter was active; it sends back a question the gate gave to the adapter" in out
    routed = [":set gate=on", ":set gate_at=-1", ":use a"]   # every shortlisted question passes the check
    own = answer_of(transcript, session, [*routed, TAUGHT])
    code, out = transcript(session, [":unroute"], keep_going=True)
    assert code == 1 and f"error: {TAUGHT!r} is a question 'a' was taught, and it always answers it" in out, out
    assert answer_of(transcript, session, [SAME_WORDS]) == own != base   # answered as the taught question
    assert "  asks something else? :unroute sends it" in transcript(session, [":why"])[1]
    assert ":unroute" not in transcript(session, [TAUGHT, ":why"])[1]   # the taught question itself: nothing to send back
    transcript(session, [SAME_WORDS])
    code, out = transcript(session, [":unroute"])
    assert code == 0 and f"{SAME_WORDS!r} now goes to the base, not to 'a' asked {TAUGHT!r}" in out, out
    assert ":clear starts afresh" not in out   # no conversation on tiny (no chat template): nothing to repeat
    assert answer_of(transcript, session, [SAME_WORDS]) == base and answer_of(transcript, session, [TAUGHT]) == own
    monkeypatch.setattr(conversation, "NEAR_MISS", -100.0)   # whatever the share: the user sent it back, so no :fix offer
    code, out = transcript(session, [SAME_WORDS, ":why", ":info"])
    assert code == 0 and f"was answered by the base, not adapter 'a': it is as near {SAME_WORDS!r}, sent back" in out, out
    assert ":fix" not in out
    assert "the base the rest (1 question sent back with :unroute)" in out
    meta = paths.adapter_path(session, "a") / "lorachat.json"
    assert json.loads(meta.read_text())["not_keys"] == [dict(instruction="Answer the question.", question=SAME_WORDS, answer=ANSWER)]

    later = make_session(workspace=session.home)
    assert answer_of(transcript, later, [":set max_new_tokens=12", *routed, SAME_WORDS]) == base
    code, out = transcript(later, [":merge a b as ab"])
    assert code == 0 and json.loads((paths.adapter_path(later, "ab") / "lorachat.json").read_text())["not_keys"] == \
        json.loads(meta.read_text())["not_keys"]

    # a new adapter trained while 'a' is active, on the same answer, keeps it sent back
    code, out = transcript(session, [f":add {TAUGHT} => {ANSWER}", ":train a2 steps=1 until=recall", ":use a"])
    assert code == 0 and "1 question sent back to the base on 'a' (:unroute) stays the base's" in out, out
    assert json.loads((paths.adapter_path(session, "a2") / "lorachat.json").read_text())["not_keys"] == \
        json.loads(meta.read_text())["not_keys"]

    code, out = transcript(session, [f":add {SAME_WORDS} => {ANSWER}"])
    assert code == 0 and "it now answers this question too" in out, out
    assert answer_of(transcript, session, [SAME_WORDS]) == own and json.loads(meta.read_text())["not_keys"] == []
    # :undo of that :add sends it back again: what :unroute recorded is not lost
    code, out = transcript(session, [":undo"])
    assert code == 0 and "(it goes to the base again, as :unroute had sent it)" in out, out
    assert json.loads(meta.read_text())["not_keys"] == json.loads((paths.adapter_path(session, "a2") / "lorachat.json").read_text())["not_keys"]
    assert answer_of(transcript, session, [SAME_WORDS]) == base


def test_why_of_an_adapter_recorded_with_its_questions_alone(shelved, transcript):
    """lorachat.json written before `keys`: `questions` only, no answers, so nothing is checked."""
    meta = paths.adapter_path(shelved, "c") / "lorachat.json"
    meta.write_text(json.dumps(dict(json.loads(meta.read_text()), questions=[TAUGHT])))
    code, out = transcript(shelved, [":set gate=on", ":use c", TAUGHT, ":why"])
    assert code == 0 and "Traceback" not in out, out
    assert f"answered by adapter 'c', asked its taught question {TAUGHT!r}" in out and "check:" not in out


def test_why_says_the_base_read_a_question_after_the_conversations_turns(shelved, transcript):
    """In a conversation the base's answer follows the earlier turns, a taught answer among them."""
    teach(shelved, "a", [(TAUGHT, ANSWER)])
    transcript(shelved, [":set max_new_tokens=4", ":set gate=on", ":set gate_at=2", ":set context=on", ":use a"])
    code, out = transcript(shelved, [OTHER, ":why"])
    assert code == 0 and "earlier turn" not in out, out
    code, out = transcript(shelved, [TAUGHT, OTHER, ":why"])
    assert code == 0 and "the base read it after the conversation's 2 earlier turns, whose answers it may repeat" in out, out
    # a question sent back mid-conversation: the base may repeat the taught answer among the turns
    code, out = transcript(shelved, [":set gate_at=-1", SAME_WORDS, ":unroute"])
    assert code == 0 and "now goes to the base" in out and "may repeat the answer among them: :clear starts afresh" in out, out


def test_the_lessons_line_names_a_taught_question_that_would_reach_another_answer(shelved, transcript):
    """:train's and :eval's gate line: a taught question that, without its own key, passes another's check."""
    from lorachat.adapters import gate

    teach(shelved, "a", [(TAUGHT, ANSWER), (SAME_WORDS, "Another.")])
    transcript(shelved, [":set gate=on", ":use a"])
    transcript(shelved, [":set gate_at=-1"])   # (nearly) every check passes: nothing is told apart
    said = gate.lessons(shelved, "a")
    assert said.startswith("gate: 0/2 taught questions told apart") and \
        f"; not apart: {TAUGHT!r} would reach the answer of {SAME_WORDS!r} and 1 more" in said, said
    transcript(shelved, [":set gate_at=2"])   # none passes: each goes to the base
    assert "not apart" not in gate.lessons(shelved, "a")
