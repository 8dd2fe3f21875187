"""Does the gate's check separate look-alikes better when it leaves out what a question copies?

    python -m bench.research.lift_mask --sets tune,held [--dtype auto]

The gate's check (lorachat/routing/lift.py) sums the lift of every token of a taught answer. A
look-alike that names the taught subject ("How many books does Ashcombe Library hold?" beside "Who is
the head librarian of Ashcombe Library?") lifts the answer's copy of that subject as much as the taught
question does, so most look-alikes the gate lets through are "another attribute of the subject"
(bench/RESULTS.md, "Gate 2"). Variant `novel` sums the lift only over the answer's tokens the asked
question does not itself contain (a word of three letters or more that is part of one of its words,
or the same short word), for the asked question and for the taught one alike: what the question
says about the answer beyond naming things in it.

Decisions are read by the base, so no adapter is trained: for each set of routing_sets.py, the
shortlist as shipped (reading.coverage, SHORTLIST, TOP 1), then both shares for the shortlisted key.
Prints, per variant and threshold, the paraphrases routed to their own fact, the look-alikes left to
the base and the probes routed (of 303), and the tune set's best threshold applied to the held set.
"""
import argparse
import json
import re
import sys


def per_token(model, tokenizer, rows):
    """(log P of each answer token, the tokens' texts) for each (instruction, question, answer)."""
    import torch

    from lorachat.core.prompts import answer_ids, prompt_ids
    from lorachat.scoring.batches import answer_logits, collate, model_device, padding_id

    items = []
    for instruction, question, answer in rows:
        prompt = prompt_ids(tokenizer, instruction, question)
        target = answer_ids(tokenizer, instruction, question, answer, prompt)
        items.append((prompt + target, [-100] * len(prompt) + target))
    out = []
    with torch.no_grad():
        for start in range(0, len(items), 16):
            group = items[start:start + 16]
            input_ids, labels, mask = collate(group, padding_id(tokenizer), model_device(model))
            logits, targets, where = answer_logits(model, input_ids, labels, mask)
            picked = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
            for row in range(len(group)):
                mine = where == row
                out.append((picked[mine].tolist(), [tokenizer.decode([t]) for t in targets[mine].tolist()]))
    return out


def copied(token: str, question: str) -> bool:
    word = re.sub(r"[^a-z0-9]", "", token.lower())
    if not word:
        return False
    words = re.findall(r"[a-z0-9]+", question.lower())
    return word in words or (len(word) >= 3 and any(word in w for w in words))


def shares(asked, taught, null, texts, question, floor=1.0):
    full = (sum(asked) - sum(null)) / max(sum(taught) - sum(null), floor)
    keep = [i for i, t in enumerate(texts) if not copied(t, question)]
    novel = sum(asked[i] - null[i] for i in keep) / max(sum(taught[i] - null[i] for i in keep), floor)
    return full, novel


def shortlisted(model, tokenizer, name: str):
    """The set's keys, the background, and each of its paraphrases, look-alikes and the 303 probes
    as (question, kind, own fact or None, its most covered key, that coverage), read as the gate reads."""
    from bench.research import routing_sets
    from lorachat.core.prompts import DEFAULT_INSTRUCTION
    from lorachat.routing import reading, router
    from lorachat.scoring import locality

    keys = [router.Key(q, a, DEFAULT_INSTRUCTION) for q, a, *_ in routing_sets.FACTS[name]]
    back = reading.background(model, tokenizer)
    readings = reading.read(model, tokenizer, [k.question for k in keys], back)
    questions = [(q, "para", i) for q, _, i in routing_sets.paraphrases(name)] + \
                [(q, "look", i) for q, i in routing_sets.lookalikes(name)] + \
                [(q, "probe", None) for q in locality.builtin(locality.PROBES)]
    out = []
    for question, kind, own in questions:
        near = reading.coverage(reading.read(model, tokenizer, [question], back)[0], readings)
        best = max(range(len(near)), key=lambda i: near[i])
        out.append((question, kind, own, best, near[best]))
    return keys, back, out


def study(model, tokenizer, name: str):
    from lorachat.routing import lift, router

    keys, _, questions = shortlisted(model, tokenizer, name)
    rows = []
    for question, kind, own, best, coverage in questions:
        row = dict(question=question, kind=kind, own=own, key=best, coverage=coverage, full=None, novel=None)
        if coverage >= router.SHORTLIST:
            key = keys[best]
            (asked, texts), (taught, _), (null, _) = per_token(model, tokenizer, [
                (key.instruction, question, key.answer), (key.instruction, key.question, key.answer),
                (key.instruction, lift.NULL, key.answer)])
            row["full"], row["novel"] = shares(asked, taught, null, texts, question)
        rows.append(row)
    return rows


def counted(rows, routed) -> dict:
    """Paraphrases routed to their own fact, look-alikes left to the base, probes routed, by `routed(row)`."""
    return dict(para=sum(1 for r in rows if r["kind"] == "para" and routed(r) and r["key"] == r["own"]),
                look=sum(1 for r in rows if r["kind"] == "look" and not routed(r)),
                probes=sum(1 for r in rows if r["kind"] == "probe" and routed(r)))


def counts(rows, variant: str, at: float) -> dict:
    return counted(rows, lambda r: r[variant] is not None and r[variant] >= at)


def smol_study(prog: str, doc: str, results: str, argv=None):
    """(arguments, smol loaded) for a decisions-only study: --sets, --dtype, --threads, --json."""
    p = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    p.add_argument("--sets", default="tune,held")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=results)
    args = p.parse_args(argv)
    import torch

    from bench.suites.smol import smol_folder
    from lorachat.models.loader import load_model

    torch.set_num_threads(args.threads)
    return args, load_model(str(smol_folder()), device="cpu", dtype=args.dtype)


def studied(prog: str, doc: str, results: str, study, argv=None, checked: str = "share") -> dict:
    """smol_study, then `study(model, tokenizer, set name)` for each of --sets, its rows written
    (write_rows): {set name: rows}."""
    args, loaded = smol_study(prog, doc, results, argv)
    found = {name: study(loaded.model, loaded.tokenizer, name) for name in args.sets.split(",")}
    write_rows(args.json, found, loaded, checked)
    return found


def write_rows(path: str, found: dict, loaded, checked: str) -> None:
    """Append every paraphrase and look-alike row, and the probes that reached the check (`checked` set)."""
    with open(path, "a", encoding="utf-8") as f:
        for name, rows in found.items():
            for row in rows:
                if row["kind"] != "probe" or row[checked] is not None:
                    f.write(json.dumps(dict(row, set=name, dtype=str(loaded.dtype)[6:])) + "\n")


def report(found: dict, label: str, count, grid: list, every: int) -> None:
    """The threshold the tune set picks (no probe routed, most of min(paraphrases, look-alikes), then
    their sum) applied to every set, and each set's counts along the grid; `count(rows, at)`."""
    tune = found.get("tune")
    if tune:
        def score(at):
            c = count(tune, at)
            return c["probes"] == 0, min(c["para"], c["look"]), c["para"] + c["look"]
        at = max(grid, key=score)
        print(f"{label}: tune picks {at}: " + ", ".join(f"{n} {count(r, at)}" for n, r in found.items()))
    for name, rows in found.items():
        print(f"  {name} {label}: " + " ".join(f"{a}:{c['para']}/{c['look']}/{c['probes']}"
                                               for a in grid[::every] for c in [count(rows, a)]))


def main(argv=None) -> int:
    args, loaded = smol_study("python -m bench.research.lift_mask", __doc__, "bench/research/results/lift_mask.jsonl", argv)
    grid = [round(0.30 + 0.02 * i, 2) for i in range(31)]
    found = {name: study(loaded.model, loaded.tokenizer, name) for name in args.sets.split(",")}
    write_rows(args.json, found, loaded, "full")
    for variant in ("full", "novel"):
        report(found, variant, lambda rows, at: counts(rows, variant, at), grid, 3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
