"""The gate's check read the other way: does the taught question invite the base's own answer to the
question asked? (issue 35)

    python -m bench.research.reverse_lift --sets tune,held [--dtype auto]

The shipped check asks how much the question lifts the *taught answer*, which repeats the subject, so
"What is the population of Greyhollow?" lifts "The river that flows through Greyhollow is the Esk"
nearly as much as a paraphrase does. Read the other way, the base's own greedy answer to the question
asked names what it asks ("The population of Greyhollow is ..."), which the taught question ("Which
river flows through Greyhollow?") should not invite, while a paraphrase's answer it should.
`revN`: (log P(a | taught question) − log P(a | NULL)) / (log P(a | asked) − log P(a | NULL)) for a,
the first N tokens of the base's greedy answer to the question asked (N = 6, 12, 24), for the key
the shortlist picks as shipped. Decisions only; each alone and beside the shipped share (the tune
set picks the threshold). Generating the base's answer before deciding would cost N decoding steps
per shortlisted question: at 6, about a fifth of a 32-token answer, over the ≤ 5% budget.
"""
import sys

from bench.research.lift_mask import counted, report, shortlisted, studied

LENGTHS = (6, 12, 24)


def study(model, tokenizer, name: str):
    from lorachat.core.prompts import prompt_ids
    from lorachat.routing import lift, router
    from lorachat.scoring import locality

    keys, _, questions = shortlisted(model, tokenizer, name)
    listed = [row for row in questions if row[4] >= router.SHORTLIST]
    answers = locality.greedy(model, tokenizer, [prompt_ids(tokenizer, keys[best].instruction, question)
                                                 for question, _, _, best, _ in listed],
                              locality.LocalityOptions(max_new_tokens=max(LENGTHS)))
    answered = {question: ids for (question, *_), ids in zip(listed, answers)}
    rows = []
    for question, kind, own, best, coverage in questions:
        row = dict(question=question, kind=kind, own=own, key=best, coverage=coverage, share=None)
        if question in answered:
            key = keys[best]
            texts = [tokenizer.decode(answered[question][:n], skip_special_tokens=True).strip() for n in LENGTHS]
            sums = lift.logprobs(model, tokenizer, [(key.instruction, q, a) for a in [key.answer] + texts
                                                    for q in (question, key.question, lift.NULL)])
            row["share"] = lift.share(sums[0], sums[1], sums[2])
            for i, (n, text) in enumerate(zip(LENGTHS, texts), start=1):
                asked, taught, null = sums[3 * i:3 * i + 3]
                row[f"rev{n}"], row[f"answer{n}"] = (taught - null) / max(asked - null, lift.FLOOR), text
        rows.append(row)
    return rows


def main(argv=None) -> int:
    from lorachat.routing import router

    found = studied("python -m bench.research.reverse_lift", __doc__, "bench/research/results/reverse_lift.jsonl", study, argv)
    grid = [round(0.05 * i, 2) for i in range(30)]
    for n in LENGTHS:
        report(found, f"rev{n}", lambda rows, at, n=n: counted(
            rows, lambda r: r["share"] is not None and r[f"rev{n}"] >= at), grid, 2)
        report(found, f"rev{n} beside share", lambda rows, at, n=n: counted(
            rows, lambda r: r["share"] is not None and r["share"] >= router.GATE_AT and r[f"rev{n}"] >= at), grid, 2)
        for weight in (0.25, 0.5, 1.0):
            report(found, f"share + {weight} rev{n}", lambda rows, at, n=n, w=weight: counted(
                rows, lambda r: r["share"] is not None and r["share"] + w * r[f"rev{n}"] >= at),
                [round(0.6 + 0.01 * i, 2) for i in range(110)], 10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
