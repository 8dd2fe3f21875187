"""Per-fact thresholds from template questions: does a check that asks more of an easily fooled fact
send "another attribute of the taught subject" to the base? (issue 35, Build 1: "per-fact thresholds
from a margin between the taught question's paraphrases and its nearest look-alikes")

    python -m bench.research.per_fact --sets tune,held [--dtype auto]

smol cannot write a taught question's look-alikes (bench/RESULTS.md, "Gate 2", contrast.py), so the
margin is calibrated on template_nots.py's 16 generic questions about the taught subject ("What is
the population of Greyhollow?", "Who founded Greyhollow?"), which lorachat could write at `:train`
time. For each taught question, the templates the shortlist gives to it (and that are not nearer to it
than `cap`, both ways: those would be rephrasings) are checked as any question is; the fact's
threshold becomes max(GATE_AT, min(upper, their highest share + margin)). A fact whose generic
questions all score low keeps GATE_AT; one whose check a generic question about its subject already
passes asks more of every question. Where template_nots.py made them not keys (decided by nearness),
here they only raise the fact's share threshold.

Counted per set: paraphrases reaching their own fact (of 40), look-alikes left to the base (of 40),
probes given to the adapter (of 303). The tune set picks (cap, margin, upper); the held half is
reported. Decisions only (the base reads). Every question's and template's share is written to the
json file, so other rules can be read off without smol.

The templates were written after the held set's routed look-alikes had been seen (template_nots.py),
which favours the held half's look-alike column.
"""
import sys

from bench.research.lift_mask import shortlisted, smol_study
from bench.research.subject_null import subject_words
from bench.research.template_nots import TEMPLATES

CAPS = (0.6, 0.7, 0.8, 1.01)
MARGINS = (-0.1, -0.05, 0.0, 0.05, 0.1)
UPPERS = (0.8, 0.85, 0.9, 1.0, 9.0)


def shares(model, tokenizer, name: str) -> dict:
    """{'keys': taught questions, 'questions': [(question, kind, own, key checked or None, share)],
    'templates': [(template, key it was made for, key checked or None, share, nearness to its key)]}."""
    from lorachat.routing import reading, router

    keys, back, questions = shortlisted(model, tokenizer, name)
    state = router.Keys(keys)
    index = lambda d: None if d.checked is None else keys.index(d.checked)  # noqa: E731
    decided = router.decide_each(model, tokenizer, state, back, [q for q, *_ in questions])
    rows = [(q, kind, own, index(d), d.share) for (q, kind, own, *_), d in zip(questions, decided)]
    made = []
    for k, key in enumerate(keys):
        subject = " ".join(subject_words(tokenizer, back, key.question))
        if not subject:
            continue
        texts = [t.format(s=subject) for t in TEMPLATES]
        taught, *read = reading.read(model, tokenizer, [key.question, *texts], back)
        for text, r, d in zip(texts, read, router.decide_each(model, tokenizer, state, back, texts)):
            made.append((text, k, index(d), d.share, router.both_ways(r, taught)))
    return dict(keys=[k.question for k in keys], questions=rows, templates=made)


def thresholds(found: dict, cap: float, margin: float, upper: float, at: float) -> list[float]:
    out = []
    for k in range(len(found["keys"])):
        got = [s for _, made_for, checked, s, near in found["templates"]
               if made_for == k and checked == k and s is not None and near < cap]
        out.append(max(at, min(upper, max(got) + margin)) if got else at)
    return out


def counts(found: dict, limits: list[float]) -> dict:
    out = dict(para=0, look=0, probes=0)
    for _, kind, own, checked, share in found["questions"]:
        routed = checked is not None and share is not None and share >= limits[checked] - 1e-9
        if kind == "para":
            out["para"] += routed and checked == own
        elif kind == "look":
            out["look"] += not routed
        else:
            out["probes"] += routed
    return out


def table(found: dict) -> list[dict]:
    from lorachat.routing import router

    rows = [dict(cap=None, margin=None, upper=None, **counts(found, [router.GATE_AT] * len(found["keys"])))]
    for cap in CAPS:
        for margin in MARGINS:
            for upper in UPPERS:
                limits = thresholds(found, cap, margin, upper, router.GATE_AT)
                rows.append(dict(cap=cap, margin=margin, upper=upper, raised=sum(x > router.GATE_AT for x in limits),
                                 **counts(found, limits)))
    return rows


def main(argv=None) -> int:
    import json

    args, loaded = smol_study("python -m bench.research.per_fact", __doc__, "bench/research/results/per_fact.jsonl", argv)
    tables = {}
    for name in args.sets.split(","):
        found = shares(loaded.model, loaded.tokenizer, name)
        tables[name] = table(found)
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(found, set=name, dtype=str(loaded.dtype)[6:])) + "\n")
            for row in tables[name]:
                f.write(json.dumps(dict(row, set=name, dtype=str(loaded.dtype)[6:])) + "\n")
    first = next(iter(tables))
    pick = max(tables[first], key=lambda r: (r["para"] + r["look"] - 10 * r["probes"], r["para"]))
    for name, rows in tables.items():
        print(f"{name}: shipped gate {rows[0]['para']}/40 paraphrases, {rows[0]['look']}/40 look-alikes, "
              f"{rows[0]['probes']} probes routed")
        same = next(r for r in rows if (r["cap"], r["margin"], r["upper"]) == (pick["cap"], pick["margin"], pick["upper"]))
        print(f"  {first}'s pick cap {pick['cap']} margin {pick['margin']} upper {pick['upper']}: "
              f"{same['para']}/40, {same['look']}/40, {same['probes']} probes, {same.get('raised')} facts raised")
        for row in sorted(rows[1:], key=lambda r: -(r["para"] + r["look"]))[:8]:
            print(f"  cap {row['cap']} margin {row['margin']:+} upper {row['upper']}: {row['para']}/40, "
                  f"{row['look']}/40, {row['probes']} probes ({row['raised']} raised)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
