"""Does the gate's check separate look-alikes when it is read token by token? (issue 35)

    python -m bench.research.token_drop --sets tune,held [--dtype auto]

The shipped check (lorachat/routing/lift.py) sums the lift over the taught answer's tokens, so a
look-alike that over-lifts the subject's name ("What is the population of Greyhollow?" beside "Which
river flows through Greyhollow?") can make up for the relation word it does not lift ("river").
Measured here, decisions only (the base reads; no adapter is trained), for the key the shortlist
picks as shipped:
- `clipped`: each token's lift counted at most as much as the taught question gives it, so no token
  makes up for another;
- `mindrop`: the most a single answer token falls, log P(token | asked) - log P(token | taught
  question) at its worst: a look-alike should make the relation word much less likely;
- `negsum`: the sum of every token's fall below the taught question;
- `share+coverage`: the shipped share plus λ times the shortlist's coverage, one threshold.
Each rule alone and beside the shipped share at GATE_AT; the tune set picks the threshold.
"""
import sys

from bench.research.lift_mask import counted, per_token, report, shortlisted, studied


def study(model, tokenizer, name: str):
    from lorachat.routing import lift, router

    keys, _, questions = shortlisted(model, tokenizer, name)
    taught = {}
    rows = []
    for question, kind, own, best, coverage in questions:
        row = dict(question=question, kind=kind, own=own, key=best, coverage=coverage, share=None)
        if coverage >= router.SHORTLIST:
            key = keys[best]
            if best not in taught:
                taught[best] = per_token(model, tokenizer, [(key.instruction, key.question, key.answer),
                                                            (key.instruction, lift.NULL, key.answer)])
            (t, texts), (n, _) = taught[best]
            (a, _), = per_token(model, tokenizer, [(key.instruction, question, key.answer)])
            lifted = [max(x - y, 0.0) for x, y in zip(t, n)]
            worst = min(range(len(a)), key=lambda i: a[i] - t[i])
            row.update(share=(sum(a) - sum(n)) / max(sum(t) - sum(n), lift.FLOOR),
                       clipped=sum(min(max(x - y, 0.0), z) for x, y, z in zip(a, n, lifted)) / max(sum(lifted), lift.FLOOR),
                       mindrop=a[worst] - t[worst], worst=texts[worst],
                       negsum=sum(min(x - y, 0.0) for x, y in zip(a, t)))
        rows.append(row)
    return rows


def main(argv=None) -> int:
    from lorachat.routing import router

    found = studied("python -m bench.research.token_drop", __doc__, "bench/research/results/token_drop.jsonl", study, argv)

    def rule(test):
        return lambda rows, at: counted(rows, lambda r: r["share"] is not None and test(r, at))

    shares = [round(0.30 + 0.02 * i, 2) for i in range(31)]
    nats = [round(-16 + 0.5 * i, 2) for i in range(33)]
    report(found, "share", rule(lambda r, at: r["share"] >= at), shares, 3)
    report(found, "clipped", rule(lambda r, at: r["clipped"] >= at), shares, 3)
    report(found, "clipped beside share", rule(lambda r, at: r["share"] >= router.GATE_AT and r["clipped"] >= at), shares, 3)
    for name in ("mindrop", "negsum"):
        report(found, name, rule(lambda r, at, name=name: r[name] >= at), nats, 4)
        report(found, f"{name} beside share", rule(lambda r, at, name=name: r["share"] >= router.GATE_AT and r[name] >= at), nats, 4)
    for weight in (0.25, 0.5, 1.0):
        report(found, f"share + {weight} coverage",
               rule(lambda r, at, w=weight: r["share"] + w * r["coverage"] >= at), [round(0.6 + 0.01 * i, 2) for i in range(100)], 10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
