"""Three more ways to tell "another attribute of the taught subject" from a paraphrase (issue 35).

    python -m bench.research.contrast --sets tune,held [--dtype auto]

Every look-alike the gate still routes asks another attribute of the taught subject ("What is the
population of Greyhollow?" beside "Which river flows through the town of Greyhollow?"), and both the
shortlist's coverage and the check's lift are carried by the subject's rare name (bench/RESULTS.md,
"Gate 2"). Measured here, decisions only (the base reads; no adapter is trained):
- `relcov`: the shortlist's coverage counted over the taught question's tokens *outside* its subject
  (subject_null.subject_words: the words with a capital or a digit, else the rarest): how much of
  what the taught question asks besides the name the question has near tokens for;
- `own`: the check with the base's *own* 32-token greedy answer to the taught question as the answer
  whose lift is shared (instead of the taught answer): a paraphrase should invite the same kind of
  answer as the taught question, another attribute another kind;
- `first6`, `outside5`: the shipped share counted over the taught answer's first 6 tokens, or its
  first 5 outside the subject's words (what kind of answer the question invites, before the fact);
- `--generate`: whether the base can write the contrast questions a per-fact margin would need
  (another attribute of the subject), asked in its chat template for five.
Each rule is applied beside the shipped share (share at 0.72 and the variant at a second threshold);
the tune set picks the threshold, the held set is reported with it.
"""
import re
import sys

from bench.research.lift_mask import counted, per_token, report, shortlisted, smol_study, write_rows
from bench.research.subject_null import in_subject, subject_words

ASK = "Write five short questions about {subject}, each asking about something different from: \"{question}\" One per line."


def outside_subject(tokenizer, question: str, subject: list[str]) -> list[float]:
    """1.0 for each token of `question` outside the subject's words, 0.0 inside."""
    spans = [(m.start(), m.end()) for word in subject for m in re.finditer(re.escape(word), question)]
    offsets = tokenizer(question, return_offsets_mapping=True)["offset_mapping"]
    return [0.0 if any(s <= start < e for s, e in spans) else 1.0 for start, _ in offsets]


def study(model, tokenizer, name: str):
    import torch

    from lorachat.core.prompts import prompt_ids
    from lorachat.routing import lift, reading, router
    from lorachat.scoring import locality

    keys, back, questions = shortlisted(model, tokenizer, name)
    readings = reading.read(model, tokenizer, [k.question for k in keys], back)
    masks = [torch.tensor(outside_subject(tokenizer, k.question, subject_words(tokenizer, back, k.question)))
             for k in keys]
    own = [tokenizer.decode(a, skip_special_tokens=True).strip() for a in locality.greedy(
        model, tokenizer, [prompt_ids(tokenizer, k.instruction, k.question) for k in keys],
        locality.LocalityOptions(max_new_tokens=32))]
    sums = lift.logprobs(model, tokenizer, [(k.instruction, q, a) for k, o in zip(keys, own)
                                            for a in (k.answer, o) for q in (k.question, lift.NULL)])
    tokens = [per_token(model, tokenizer, [(k.instruction, k.question, k.answer), (k.instruction, lift.NULL, k.answer)])
              for k in keys]
    subjects = [subject_words(tokenizer, back, k.question) for k in keys]
    rows = []
    for question, kind, mine, best, coverage in questions:
        row = dict(question=question, kind=kind, own=mine, key=best, coverage=coverage, share=None, relcov=None,
                   own_share=None, first6=None, outside5=None)
        if coverage >= router.SHORTLIST:
            key, base = keys[best], 4 * best
            asked = lift.logprobs(model, tokenizer, [(key.instruction, question, key.answer),
                                                     (key.instruction, question, own[best])])
            row["share"] = lift.share(asked[0], sums[base], sums[base + 1])
            (mine_t, texts), = per_token(model, tokenizer, [(key.instruction, question, key.answer)])
            (taught_t, _), (null_t, _) = tokens[best]
            outside = [i for i, t in enumerate(texts) if not in_subject(t, subjects[best])]
            row["first6"] = part_share(mine_t, taught_t, null_t, range(min(6, len(texts))))
            row["outside5"] = part_share(mine_t, taught_t, null_t, outside[:5])
            row["own_share"] = lift.share(asked[1], sums[base + 2], sums[base + 3])
            near = (readings[best].vectors @ reading.read(model, tokenizer, [question], back)[0].vectors.T).max(1).values
            weights = readings[best].weights * masks[best]
            row["relcov"] = float((near * weights).sum() / weights.sum().clamp(min=1e-6))
        rows.append(row)
    return rows, own


def part_share(asked, taught, null, indices, floor=0.3) -> float:
    """The share of lift counted over the answer tokens at `indices` only."""
    return sum(asked[i] - null[i] for i in indices) / max(sum(taught[i] - null[i] for i in indices), floor)


def generated(model, tokenizer, name: str) -> list[str]:
    from bench.research import routing_sets

    out = []
    for question, *_ in routing_sets.FACTS[name]:
        chat = [{"role": "user", "content": ASK.format(subject=question, question=question)}]
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
        ids = ids if hasattr(ids, "shape") else ids["input_ids"]
        text = tokenizer.decode(model.generate(ids, max_new_tokens=80, do_sample=False)[0, ids.shape[1]:],
                                skip_special_tokens=True)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        out.append(f"{question} -> {sum(line.endswith(question) for line in lines)} of {len(lines)} lines repeat it: "
                   + " | ".join(lines[:5]))
    return out


RULES = {
    "share+relcov": lambda r, at: r["share"] >= 0.72 and r["relcov"] >= at,
    "share+own": lambda r, at: r["share"] >= 0.72 and r["own_share"] >= at,
    "own": lambda r, at: r["own_share"] >= at,
    "first6": lambda r, at: r["first6"] >= at,
    "outside5": lambda r, at: r["outside5"] >= at,
    "share+first6": lambda r, at: r["share"] >= 0.72 and r["first6"] >= at,
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    generate = "--generate" in argv
    args, loaded = smol_study("python -m bench.research.contrast", __doc__, "bench/research/results/contrast.jsonl",
                              [a for a in argv if a != "--generate"])
    found = {}
    for name in args.sets.split(","):
        found[name], own = study(loaded.model, loaded.tokenizer, name)
        print(f"{name}: the base's own answers: " + " | ".join(a[:60] for a in own))
        if generate:
            print("\n".join(generated(loaded.model, loaded.tokenizer, name)))
    write_rows(args.json, found, loaded, "share")
    shipped = lambda r: r["share"] is not None and r["share"] >= 0.72  # noqa: E731
    print("shipped (share at 0.72): " + ", ".join(f"{n} {counted(r, shipped)}" for n, r in found.items()))
    grid = [round(0.2 + 0.05 * i, 2) for i in range(17)]
    for rule, decide in RULES.items():
        report(found, rule, lambda rows, at: counted(rows, lambda r: r["share"] is not None and decide(r, at)), grid, 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
