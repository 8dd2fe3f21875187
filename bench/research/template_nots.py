"""Not keys written from templates: can lorachat send "another attribute of the taught subject" to
the base by itself, the way `:unroute` does for a question the user names? (issue 35)

    python -m bench.research.template_nots --sets tune,held [--dtype auto]

For each taught question, generic questions about its subject (the subject as subject_null.py finds
it: the words after the first with a capital or a digit, else the rarest word) asking something else
("What is the population of Greyhollow?", "Who founded Greyhollow?") are recorded as not keys of its
answer, as `:unroute` records the question a user sends back, and router.py's rule then decides: a
question that passes the check goes to the base when it is at least as near one of them (both ways)
as to every taught question for that answer. Two filters on which templates become not keys: those
nearer the taught question than `cap` (both ways) are left out (too near to be anything but a
rephrasing), and with `passing` only those the gate itself would give the adapter are kept (the ones
smol mistakes for the taught question). Counted per set: paraphrases reaching their own fact (of 40),
look-alikes left to the base (of 40), probes given to the adapter (of 303). The tune set picks the
variant; the held half is reported. Decisions only (the base reads).

The templates were written after the held set's routed look-alikes had been seen (bench/RESULTS.md,
"Gate 2" lists them), so what the held half says of look-alikes leans in their favour; what it
says of paraphrases does not.
"""
import sys

from bench.research.lift_mask import shortlisted, smol_study
from bench.research.subject_null import subject_words

TEMPLATES = ["Where is {s}?", "When was {s} founded?", "Who founded {s}?", "How big is {s}?", "How old is {s}?",
             "What is {s} known for?", "What colour is {s}?", "How much does {s} cost?", "What is the population of {s}?",
             "What is {s} made of?", "Who owns {s}?", "What is the history of {s}?", "How many people work at {s}?",
             "What does {s} look like?", "Who lives in {s}?", "What is the weather like in {s}?"]
CAPS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.01)


def nots_for(model, tokenizer, keys, back, cap: float, passing: bool, memo: dict):
    """The template not keys of every key: (router.Key, its nearness to its taught question, passes)."""
    from lorachat.routing import reading, router

    if "made" not in memo:
        made = []
        plain = router.Keys(keys)
        for key in keys:
            subject = " ".join(subject_words(tokenizer, back, key.question))
            if not subject:
                continue
            texts = [t.format(s=subject) for t in TEMPLATES]
            taught, *read = reading.read(model, tokenizer, [key.question, *texts], back)
            for text, r in zip(texts, read):
                d = router.decide(model, tokenizer, plain, back, text)
                made.append((router.Key(text, key.answer, key.instruction), router.both_ways(r, taught),
                             d.key is not None and d.key.answer == key.answer))
        memo["made"] = made
    return [k for k, near, passes in memo["made"] if near < cap and (passes or not passing)]


def counts(model, tokenizer, keys, back, questions, nots) -> dict:
    from lorachat.routing import router

    state = router.Keys(keys, nots=nots)
    out = dict(para=0, look=0, probes=0)
    for question, kind, own, *_ in questions:
        d = router.decide(model, tokenizer, state, back, question)
        if kind == "para":
            out["para"] += d.key is not None and d.key.answer == keys[own].answer
        elif kind == "look":
            out["look"] += d.key is None
        else:
            out["probes"] += d.key is not None
    return out


def main(argv=None) -> int:
    import json

    args, loaded = smol_study("python -m bench.research.template_nots", __doc__, "bench/research/results/template_nots.jsonl", argv)
    model, tokenizer = loaded.model, loaded.tokenizer
    for name in args.sets.split(","):
        keys, back, questions = shortlisted(model, tokenizer, name)
        memo = {}
        rows = [dict(variant="none", cap=None, nots=0, **counts(model, tokenizer, keys, back, questions, []))]
        for passing in (False, True):
            for cap in CAPS:
                nots = nots_for(model, tokenizer, keys, back, cap, passing, memo)
                rows.append(dict(variant="passing" if passing else "all", cap=cap, nots=len(nots),
                                 **counts(model, tokenizer, keys, back, questions, nots)))
        with open(args.json, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(dict(row, set=name, dtype=str(loaded.dtype)[6:])) + "\n")
            for key, near, passes in memo["made"]:
                f.write(json.dumps(dict(template=key.question, near=round(near, 3), passes=passes, set=name)) + "\n")
        print(f"{name}: templates made {len(memo['made'])}, {sum(p for *_, p in memo['made'])} the gate would route")
        for row in rows:
            print(f"  {row['variant']:8} cap {row['cap']!s:5} not keys {row['nots']:3}: paraphrases {row['para']}/40, "
                  f"look-alikes as the base {row['look']}/40, probes routed {row['probes']}/303")
    return 0


if __name__ == "__main__":
    sys.exit(main())
