"""Locality: the two built-in question lists, kept/agree as :eval measures them, and cross-talk
between two near-identical taught questions."""
import json
import re

import pytest

from bench.kit.pairs import SION, SOH
from lorachat.adapters import disk, live, side_by_side
from lorachat.core import cache as app_cache
from lorachat.core.prompts import DEFAULT_INSTRUCTION
from lorachat.scoring import locality
from lorachat.training import lora
from tests.helpers import examples_of, write_dataset


def normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def test_probes_and_anchors_are_shipped_and_disjoint():
    probes, anchors = locality.builtin(locality.PROBES), locality.builtin(locality.ANCHORS)
    assert len(probes) >= 250 and len(anchors) >= 250
    for questions in (probes, anchors):
        assert len({normal(q) for q in questions}) == len(questions)  # no duplicates either
    assert not {normal(q) for q in probes} & {normal(q) for q in anchors}
    taught = {normal(q) for q in (SOH[0], SION[0], "Who wrote Hamlet?", "What is the capital of France?")}
    assert not taught & {normal(q) for q in probes + anchors}


def test_exact_is_what_greedy_decoding_returns(make_session):
    """kept counts, without generating, exactly the probes whose greedy answer is the base's."""
    import torch
    from peft import LoraConfig

    session = make_session()
    questions = [(DEFAULT_INSTRUCTION, q) for q in locality.builtin(locality.PROBES)[:24]]
    ref = side_by_side.session_reference(session, questions)
    torch.manual_seed(3)
    live.add_new(session, "noisy", LoraConfig(r=4, target_modules=["v_proj"], init_lora_weights=False))
    live.activate(session, "noisy")
    live.set_scale(session, "noisy", 0.05)  # perturbed enough to change some answers, not all
    scored = locality.score(session.model, session.tokenizer, ref)
    answers = locality.greedy(session.model, session.tokenizer, [list(p) for p in ref.prompts])
    same = sum(list(a) == b for a, b in zip(ref.answers, answers))
    assert 0 < scored.exact < len(questions) and scored.exact == same
    assert scored.exact / 24 < scored.agreement < 1


def test_the_base_keeps_every_one_of_its_own_answers_in_bf16(make_session):
    """kept compares with the base's own argmax as the teacher-forced pass reads it: a batched, cached
    generation in bf16 rounds otherwise, and the base did not keep 2 of these 64 answers (float32: all).
    A file kept on disk from before, without those argmaxes, is made again."""
    questions = [(DEFAULT_INSTRUCTION, q) for q in locality.builtin(locality.PROBES)[:64]]
    session = make_session(dtype="bfloat16")
    ref = side_by_side.session_reference(session, questions)
    scored = locality.score(session.model, session.tokenizer, ref)
    assert (scored.exact, scored.agree) == (64, scored.tokens)
    assert [len(p) for p in ref.predicted] == [len(a) for a in ref.answers]
    for path in app_cache.cache_dir().joinpath("base-answers").rglob("*.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(json.dumps({"prompts": data["prompts"], "answers": data["answers"]}), encoding="utf-8")
    again = side_by_side.session_reference(make_session(dtype="bfloat16"), questions)
    assert again.predicted == ref.predicted


def test_the_bases_answers_are_made_once_per_checkpoint_and_kept_on_disk(make_session, monkeypatch):
    """A new session over the same weight files reads the base's answers from the cache folder instead
    of generating them; a damaged file, or prompts the tokenizer no longer makes, are made again."""
    questions = [(DEFAULT_INSTRUCTION, q) for q in locality.builtin(locality.PROBES)[:6]]
    made = side_by_side.session_reference(make_session(), questions)
    stored = list(app_cache.cache_dir().joinpath("base-answers").rglob("*.json"))
    generated = []
    real = locality.greedy
    monkeypatch.setattr(locality, "greedy", lambda *a, **k: generated.append(1) or real(*a, **k))
    assert side_by_side.session_reference(make_session(), questions) == made and not generated
    for path in stored:
        path.write_text("{not json", encoding="utf-8")
    assert side_by_side.session_reference(make_session(), questions) == made and generated == [1]
    other = [(DEFAULT_INSTRUCTION + " Be brief.", q) for _, q in questions]
    side_by_side.session_reference(make_session(), other)
    assert generated == [1, 1]


def test_eval_shows_kept_and_agree_untrained_keeps_all_trained_keeps_less(make_session, transcript, home):
    write_dataset(home, "default", [SOH, SION])
    write_dataset(home, "kitchen", [("How do I cook couscous?", "Pour boiling water over it."),
                                    ("What is a good pasta shape for pesto?", "Trofie.")])
    session = make_session()
    live.add_new(session, "fresh", adapters_config())  # B = 0: exactly the base
    disk.save(session, "fresh", {"dataset": "default"})
    code, out = transcript(session, [":train taught steps=20 until=steps lr=1e-2",
                                     ":eval fresh taught builtin=8 probes=kitchen"])
    assert code == 0, out
    table = out.splitlines()[out.splitlines().index("dataset 'default' (2 examples); probes: 8 built-in + 2 from 'kitchen', 16 tokens"):]
    assert table[1].split() == ["adapter", "loss", "recall", "kept", "agree"]
    rows = {r.split()[0]: r.split() for r in table[2:5]}
    assert rows["base"][3:] == ["100.0%", "100.0%"] and rows["fresh"][3:] == ["100.0%", "100.0%"]
    assert float(rows["taught"][3].rstrip("%")) < 100 and float(rows["taught"][4].rstrip("%")) < 100
    cache = session.extensions["locality"]
    entries = len(cache)   # :train's anchors and built-in probes, :eval's probes
    transcript(session, [":eval base builtin=8 probes=kitchen"])
    assert len(cache) == entries  # the base's answers are computed once per session
    transcript(session, [":instruction Answer briefly.", ":eval base builtin=8 probes=kitchen"])
    assert len(cache) == entries + 1  # another instruction asks other questions


def adapters_config():
    from peft import LoraConfig

    return LoraConfig(r=4, target_modules=["q_proj", "v_proj"])


@pytest.mark.parametrize("bad", [":eval builtin=-1", ":eval probe_tokens=0", ":eval probes=nothing-here"])
def test_eval_bad_keys_are_one_line(make_session, transcript, home, bad):
    write_dataset(home, "default", [SOH])
    session = make_session()
    code, out = transcript(session, [bad])
    assert code != 0 and out.count("error: ") == 1 and "Traceback" not in out


def test_two_near_identical_questions_keep_their_own_answers(make_session, transcript, home):
    """The seed's SOH/SiON mix-up: after :train, each question gets its own answer, not the other's."""
    write_dataset(home, "default", [SOH, SION])
    session = make_session()
    code, out = transcript(session, [":train", SOH[0], SION[0]])
    assert code == 0, out
    lines = out.splitlines()
    assert re.fullmatch(r"trained default: \d+ steps, loss \S+, recall 2/2, .* now active", lines[1]), lines
    assert lines[2:] == [f"> {SOH[0]}", SOH[1], f"> {SION[0]}", SION[1]]


def test_rehearsal_keeps_more_of_the_base_and_recall_is_unchanged():
    """:train's anchor rehearsal (the default since locality phase 2) against the same training
    without it: recall is the same, and more of the base's answers on unseen probes survive."""
    import dataclasses

    from lorachat.models.loader import load_model
    from lorachat.training import planning, recipe, trainer

    examples = examples_of([SOH, SION])
    probes_asked = [(DEFAULT_INSTRUCTION, q) for q in locality.builtin(locality.PROBES)[:16]]
    scores = {}
    for anchors in (0, 4):
        loaded = load_model("tiny", device="cpu")
        config = recipe.resolved(loaded.model, dataclasses.replace(recipe.DEFAULTS, steps=200, anchors=anchors, anchor_pool=16))
        model = lora.wrapped(loaded.model, config)
        probes = locality.reference(model, loaded.tokenizer, probes_asked)  # B = 0: the base's answers
        result = trainer.run(model, loaded.tokenizer, planning.plan(model, loaded.tokenizer, examples, config))
        scores[anchors] = (result.recall, locality.score(model, loaded.tokenizer, probes).agreement)
    assert scores[0][0] == scores[4][0] == 2
    assert scores[4][1] > scores[0][1] + 0.2, scores


def test_the_notebooks_r4_still_teaches_the_shipped_semiconductor_pairs(make_session, transcript, home):
    """The issue: a user's explicit r=4 (the notebook's) must still teach the sample's lessons with
    the locality defaults on (README's sample, datasets/semiconductor.jsonl: SOH and SiON)."""
    from pathlib import Path

    folder = home / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    sample = Path(__file__).resolve().parents[2] / "datasets" / "semiconductor.jsonl"
    (folder / "semiconductor.jsonl").write_bytes(sample.read_bytes())
    rows = [json.loads(line) for line in sample.read_text().splitlines()]
    session = make_session()
    code, out = transcript(session, [":dataset semiconductor", ":train r=4"])
    assert code == 0 and re.search(rf"recall {len(rows)}/{len(rows)}, kept \d+% of base answers", out), out
    for row in rows:
        assert session.ask(row["input"]) == row["output"]


def test_train_measures_kept_on_the_first_probes_and_probes_0_turns_it_off(make_session, transcript, home):
    write_dataset(home, "default", [SOH])
    session = make_session()
    code, out = transcript(session, [":train a until=steps steps=2 probes=7", ":train b until=steps steps=2 probes=0"])
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.startswith("trained")]
    assert re.search(r"recall \d/1, kept \d+% of base answers, ", lines[0]) and "kept" not in lines[1], lines
    metas = {n: json.loads((home / "adapters" / n / "lorachat.json").read_text()) for n in "ab"}
    assert metas["a"]["probes"] == 7 and 0 <= metas["a"]["kept"] <= 1
    assert metas["b"]["probes"] is None and metas["b"]["kept"] is None
    cache = session.extensions["locality"]
    assert sorted(len(key[0]) for key in cache) == [7, 64]   # the first 7 probes, the 64 anchors
