"""The ask-time gate (adapters/gate.py) on tiny, turned on by hand (auto leaves it off under 50M
parameters): an adapter answers only questions near the ones lorachat.json says it was taught."""
import json

from lorachat.adapters import paths

TAUGHT = "What is SOH?"
OTHER = "Who wrote Hamlet?"


def answer_of(transcript, session, lines) -> str:
    return transcript(session, lines)[1].rstrip("\n").splitlines()[-1]


def teach(session, name, questions):
    """Record in adapter `name`'s lorachat.json that it was taught `questions` (what :train writes)."""
    meta = paths.adapter_path(session, name) / "lorachat.json"
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"questions": questions}))


def test_the_gate_leaves_other_questions_to_the_base_and_measures_as_it_asks(shelved, transcript, make_session):
    session = shelved
    teach(session, "a", [TAUGHT])
    transcript(session, [":set max_new_tokens=12"])
    base = {q: answer_of(transcript, session, [":use base", q]) for q in (TAUGHT, OTHER)}
    own = {q: answer_of(transcript, session, [":use a", q]) for q in (TAUGHT, OTHER)}   # auto: off on tiny
    assert own[OTHER] != base[OTHER], "the random adapter must change the answer for the gate to show"
    assert "off (auto: a model under 50M parameters)" in transcript(session, [":info"])[1]

    transcript(session, [":set gate=on", ":set gate_at=0.99"])
    assert answer_of(transcript, session, [OTHER]) == base[OTHER]
    assert answer_of(transcript, session, [TAUGHT]) == own[TAUGHT]   # 1.0 from itself
    assert "on at 0.99: 'a' answers questions near its 1 taught one, the base the rest" in transcript(session, [":info"])[1]
    code, out = transcript(session, [f":compare a b -- {OTHER}"])
    assert code == 0 and "the gate leaves this question to the base for a " in out, out
    lines = out.rstrip("\n").splitlines()
    assert lines[lines.index("[a]") + 1] == base[OTHER]
    b_own = lines[lines.index("[b]") + 1]   # b has no record of its questions: it answers everything
    assert answer_of(transcript, session, [":use b", OTHER]) == b_own != base[OTHER]

    # :eval: no probe is near "What is SOH?" at 0.99, so a keeps every base answer; without the gate it does not
    transcript(session, [f":add {TAUGHT} => A film.", f":add {OTHER} => Shakespeare."])
    kept = {}
    for setting in ("on", "off"):
        out = transcript(session, [f":set gate={setting}", ":eval a builtin=8"])[1]
        kept[setting] = next(line.split()[3] for line in out.splitlines() if line.startswith("a "))
        assert "error" not in out, out
    assert kept["on"] == "100.0%" and kept["off"] != "100.0%", kept

    later = make_session(workspace=session.home)   # a new session reads the questions from lorachat.json
    transcript(later, [":set max_new_tokens=12", ":set gate=on", ":set gate_at=0.99"])
    assert answer_of(transcript, later, [":use a", OTHER]) == base[OTHER]
    assert answer_of(transcript, later, [TAUGHT]) == own[TAUGHT]


def test_the_gates_background_is_made_once_per_checkpoint_and_kept_on_disk(shelved, transcript, make_session, monkeypatch):
    """The base's background vector (what nearness takes off every question's) is made by the first
    session over these weight files and read by later ones; a damaged file is made again."""
    import torch

    from lorachat.adapters import base_cache, gate
    from lorachat.scoring import nearness

    path = base_cache.path(shelved, "gate", [gate.BACKGROUND_VERSION, nearness.background_questions()], ".safetensors")
    path.unlink(missing_ok=True)   # the cache folder is this test run's, shared by its tests
    made, real = [], nearness.background
    monkeypatch.setattr(nearness, "background", lambda *args: made.append(1) or real(*args))
    teach(shelved, "a", [TAUGHT])
    lines = [":set max_new_tokens=4", ":set gate=on", ":set gate_at=0.99", ":use a", OTHER]
    answers, means = [], []
    for session in (shelved, make_session(workspace=shelved.home), None):
        if session is None:
            path.write_bytes(b"not a safetensors file")
            session = make_session(workspace=shelved.home)
        answers.append(answer_of(transcript, session, lines))
        means.append(gate._state(session)["mean"])
    assert made == [1, 1] and path.is_file()   # made, read, made again over the damaged file
    assert torch.equal(means[0], means[1]) and torch.allclose(means[0], means[2])
    assert answers[0] == answers[1] == answers[2]
