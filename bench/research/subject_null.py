"""Does the gate's check separate "another attribute of the taught subject" when its null question
names the subject?

    python -m bench.research.subject_null --sets tune,held [--dtype auto]

The check (lorachat/routing/lift.py) measures how much a question lifts the taught answer beyond
NULL ("Tell me something."). A look-alike that names the taught subject ("What is the population of
Greyhollow?" beside "Which river flows through the town of Greyhollow?") lifts the answer's copy of
the subject as the taught question does, and passes (bench/RESULTS.md, "Gate 2"). Variant `subject`
measures the lift beyond a question that only names the subject, "Tell me about Greyhollow." (its
words: those of the taught question after the first with a capital letter or a digit; with none,
its rarest word among the built-in anchor questions), so what counts is what the question asks about the subject:
share_s = (lift(asked) - lift(subject)) / (lift(taught) - lift(subject)). Variant `relation` keeps
NULL but sums the lift only over the answer's tokens that are not part of the subject's words (for
the asked and the taught question alike): what the question makes likelier besides the subject's
name, i.e. the relation it asks about. Decision rules compared: the shipped share alone at 0.72; each
variant alone; each beside the shipped share (share at 0.72 and the variant at a second threshold).

Decisions are read by the base, so no adapter is trained: for each set of routing_sets.py, the
shortlist as shipped (reading.coverage, SHORTLIST, TOP 1), then the shares for the shortlisted key.
Prints per rule and threshold the paraphrases routed to their own fact, look-alikes left to the base
and probes routed (of 303), and the tune set's pick applied to the held set.
"""
import re
import sys

from bench.research.lift_mask import counted, per_token, report, shortlisted, smol_study, write_rows


def subject_words(tokenizer, back, question: str) -> list[str]:
    """The taught question's words that name what it is about: those after the first with a capital
    letter or a digit; with none, the one word whose tokens are rarest among the anchor questions."""
    words = [re.sub(r"'s$", "", w) for w in re.findall(r"[A-Za-z0-9][A-Za-z0-9'-]*", question)][1:]
    named = [w for w in words if any(c.isupper() or c.isdigit() for c in w)]
    if named or not words:
        return named
    rarity = lambda w: sum(back.idf.get(t, back.unseen) for t in tokenizer(" " + w)["input_ids"])  # noqa: E731
    return [max(words, key=rarity)]


def in_subject(token: str, subject: list[str]) -> bool:
    """Whether an answer token's text is (part of) one of the subject's words."""
    piece = re.sub(r"[^a-z0-9]", "", token.lower())
    words = [re.sub(r"[^a-z0-9]", "", w.lower()) for w in subject]
    return bool(piece) and any(piece == w or (len(piece) >= 3 and piece in w) for w in words)


def relation_share(asked, taught, null, texts, subject, floor=1.0):
    keep = [i for i, t in enumerate(texts) if not in_subject(t, subject)]
    return sum(asked[i] - null[i] for i in keep) / max(sum(taught[i] - null[i] for i in keep), floor)


def study(model, tokenizer, name: str):
    from lorachat.routing import lift, router

    keys, back, questions = shortlisted(model, tokenizer, name)
    subjects = [subject_words(tokenizer, back, k.question) for k in keys]
    nulls = [f"Tell me about {' '.join(s)}." if s else lift.NULL for s in subjects]
    own = lift.logprobs(model, tokenizer, [(k.instruction, q, k.answer) for k in keys
                                          for q in (k.question, lift.NULL, nulls[keys.index(k)])])
    taught = [(own[3 * i], own[3 * i + 1], own[3 * i + 2]) for i in range(len(keys))]
    tokens = [per_token(model, tokenizer, [(k.instruction, k.question, k.answer), (k.instruction, lift.NULL, k.answer)])
              for k in keys]
    rows = []
    for question, kind, mine, best, coverage in questions:
        row = dict(question=question, kind=kind, own=mine, key=best, coverage=coverage, share=None, subject=None,
                   relation=None)
        if coverage >= router.SHORTLIST:
            key = keys[best]
            asked = lift.logprobs(model, tokenizer, [(key.instruction, question, key.answer)])[0]
            t, null, subject = taught[best]
            row["share"] = lift.share(asked, t, null)
            row["subject"] = lift.share(asked, t, subject)
            (mine_t, texts), = per_token(model, tokenizer, [(key.instruction, question, key.answer)])
            (taught_t, _), (null_t, _) = tokens[best]
            row["relation"] = relation_share(mine_t, taught_t, null_t, texts, subjects[best])
        rows.append(row)
    return rows, [dict(question=k.question, subject=n) for k, n in zip(keys, nulls)]


RULES = {
    "share": lambda r, at: r["share"] is not None and r["share"] >= 0.72 if at is None else r["share"] >= at,
    "subject": lambda r, at: r["subject"] is not None and r["subject"] >= at,
    "both": lambda r, at: r["share"] is not None and r["share"] >= 0.72 and r["subject"] >= at,
    "relation": lambda r, at: r["relation"] is not None and r["relation"] >= at,
    "share+relation": lambda r, at: r["share"] is not None and r["share"] >= 0.72 and r["relation"] >= at,
}


def counts(rows, rule, at) -> dict:
    return counted(rows, lambda r: r["share"] is not None and RULES[rule](r, at))


def main(argv=None) -> int:
    args, loaded = smol_study("python -m bench.research.subject_null", __doc__,
                              "bench/research/results/subject_null.jsonl", argv)
    found = {}
    for name in args.sets.split(","):
        rows, subjects = study(loaded.model, loaded.tokenizer, name)
        found[name] = rows
        print(f"{name} subjects: " + "; ".join(s["subject"] for s in subjects))
    write_rows(args.json, found, loaded, "share")
    print("shipped (share at 0.72): " + ", ".join(f"{n} {counts(r, 'share', None)}" for n, r in found.items()))
    grid = [round(-0.2 + 0.05 * i, 2) for i in range(25)]
    for rule in ("subject", "both", "relation", "share+relation"):
        report(found, rule, lambda rows, at: counts(rows, rule, at), grid, 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
