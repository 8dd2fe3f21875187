"""Does the taught adapter itself tell a paraphrase from a look-alike better than the base? (issue 35)

    python -m bench.research.adapter_lift --sets tune,held [--seed 0] [--dtype auto]

Every measure of gate 2's study reads the base, which cannot tell "another attribute of the taught
subject" from a rephrasing of the taught question (bench/RESULTS.md, "Gate 2"). The adapter has been
trained on the taught question and generalises to some phrasings of it: whether it also carries the
taught answer to a look-alike is what this measures. Per set, the ten facts are taught with `:train`'s
defaults on a fresh smol session; then, for the key the shipped shortlist picks (read by the base),
the log probability of the taught answer after the asked question, the taught question and NULL,
once by the base and once with the adapter on:
- `share`: the shipped check (the base's share of the taught question's lift);
- `ashare`: the same share read with the adapter on;
- `gain`: how much the adapter raises the taught answer after the asked question, as a share of
  how much it raises it after the taught question: (A(q) - B(q)) / (A(taught) - B(taught)).
Each alone and beside the shipped share at GATE_AT; the tune set picks the threshold. A check that
read the adapter instead of the base would cost the same one pass (the adapter's own readings of the
taught question and NULL are made once per loaded adapter).
"""
import sys
import tempfile

from bench.research.lift_mask import counted, per_token, report, smol_study, write_rows


def study(model_name: str, dtype: str, name: str, seed: int):
    from bench.kit.workspace import command
    from bench.research import routing_sets
    from bench.research.routing import fresh_session
    from lorachat.adapters import live
    from lorachat.core.prompts import DEFAULT_INSTRUCTION, Example
    from lorachat.lessons import jsonl
    from lorachat.routing import lift, reading, router
    from lorachat.scoring import locality

    facts = routing_sets.FACTS[name]
    session = fresh_session(model_name, tempfile.mkdtemp(), dtype)
    jsonl.append_examples(session.home, "taught", [Example(DEFAULT_INSTRUCTION, q, a) for q, a, *_ in facts])
    session.dataset = "taught"
    print(command(session, f":train taught seed={seed}").strip().splitlines()[0], file=sys.stderr, flush=True)
    model, tokenizer = session.model, session.tokenizer
    current = live.switch(session)
    keys = [router.Key(q, a, DEFAULT_INSTRUCTION) for q, a, *_ in facts]
    with current.disabled():
        back = reading.background(model, tokenizer)
        readings = reading.read(model, tokenizer, [k.question for k in keys], back)
    questions = [(q, "para", i) for q, _, i in routing_sets.paraphrases(name)] + \
                [(q, "look", i) for q, i in routing_sets.lookalikes(name)] + \
                [(q, "probe", None) for q in locality.builtin(locality.PROBES)]

    def sums(rows, adapter: bool):
        import contextlib
        with contextlib.nullcontext() if adapter else current.disabled():
            return [sum(p) for p, _ in per_token(model, tokenizer, rows)]

    taught = {}
    out = []
    for question, kind, own in questions:
        with current.disabled():
            near = reading.coverage(reading.read(model, tokenizer, [question], back)[0], readings)
        best = max(range(len(near)), key=lambda i: near[i])
        row = dict(question=question, kind=kind, own=own, key=best, coverage=near[best], share=None, seed=seed)
        if near[best] >= router.SHORTLIST:
            key = keys[best]
            if best not in taught:
                both = [(key.instruction, key.question, key.answer), (key.instruction, lift.NULL, key.answer)]
                taught[best] = (sums(both, False), sums(both, True))
            (bt, bn), (at, an) = taught[best]
            (bq,), (aq,) = (sums([(key.instruction, question, key.answer)], adapter) for adapter in (False, True))
            row.update(share=lift.share(bq, bt, bn), ashare=lift.share(aq, at, an),
                       gain=(aq - bq) / max(at - bt, lift.FLOOR), aq=aq, at=at)
        out.append(row)
    return out


def main(argv=None) -> int:
    import argparse

    from lorachat.routing import router

    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--seed", type=int, default=0)
    mine, rest = extra.parse_known_args(argv)
    args, loaded = smol_study("python -m bench.research.adapter_lift", __doc__,
                              "bench/research/results/adapter_lift.jsonl", rest)
    del loaded   # each set teaches its own fresh session
    found = {name: study("smol", args.dtype, name, mine.seed) for name in args.sets.split(",")}

    class Loaded:
        dtype = f"torch.{args.dtype}"
    write_rows(args.json, found, Loaded, "share")

    def rule(test):
        return lambda rows, at: counted(rows, lambda r: r["share"] is not None and test(r, at))

    grid = [round(0.30 + 0.02 * i, 2) for i in range(31)]
    report(found, "share", rule(lambda r, at: r["share"] >= at), grid, 3)
    for variant in ("ashare", "gain"):
        report(found, variant, rule(lambda r, at: r[variant] >= at), grid, 3)
        report(found, f"{variant} beside share", rule(lambda r, at: r["share"] >= router.GATE_AT and r[variant] >= at), grid, 3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
