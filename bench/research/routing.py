"""The routing study (issue 35): who answers paraphrases, look-alikes and unrelated questions once
an adapter is taught ten facts on smol, under each way of deciding.

    python -m bench.research.routing --sets tune,held --seeds 0,1,2 --json bench/research/results/routing.jsonl
    python -m bench.research.routing --table bench/research/results/routing.jsonl

Per set of bench/research/routing_sets.py and seed: a fresh session over smol (CPU, fp32 unless
--dtype says otherwise; rows say which) teaches
the set's ten pairs with `:train`'s defaults, then each method decides every paraphrase (40),
look-alike (40) and built-in probe (303), and the questions it gives the adapter are answered
(greedy, 64 tokens, each asked alone); the rest are the base's answers, exactly. Methods:
- `gate2`: lorachat's gate as shipped (adapters/gate.py: shortlist by coverage, check by lift; the
  adapter is asked the taught question matched);
- `gate2-asked`: the same decisions, the adapter asked the question as the user typed it;
- `cosine`: round 3's gate, rebuilt here (the mean-pooled last hidden state less the background
  mean, cosine to the nearest taught question at 0.5; the adapter asked the question as typed).
Figures: paraphrases routed to their own fact and answers carrying its key term; look-alikes
answered exactly as the base; probes routed and kept (teacher-forced 16 tokens, as :eval); the
decision's median milliseconds. Measures only; the base's answers are cached in
$LORACHAT_CACHE/smol_locality/.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.research import routing_sets
from bench.research.smol_locality import Cache, hash_of, record

TOKENS = 64
COSINE_AT = 0.5
METHODS = ("gate2", "gate2-asked", "cosine")


def fresh_session(model_name: str, home, dtype: str = "float32"):
    from bench.kit.workspace import session_for
    from lorachat.models.loader import load_model

    session = session_for(load_model(model_name, device="cpu", dtype=dtype), home)
    session.settings.context = "off"            # every question asked alone
    session.settings.max_new_tokens = TOKENS
    return session


def generated(session, questions: list[str], base: bool = False) -> list[str]:
    """Greedy answers (text, at most TOKENS tokens) of the active adapter, or of the base, to
    `questions` asked alone: locality.greedy's batches, decoded as streaming shows them."""
    import contextlib

    from lorachat.adapters import live
    from lorachat.adapters.side_by_side import decode_answer
    from lorachat.core.prompts import prompt_ids
    from lorachat.scoring import locality

    if not questions:
        return []
    prompts = [prompt_ids(session.tokenizer, session.instruction, q) for q in questions]
    current = live.switch(session)
    with current.disabled() if base and current is not None else contextlib.nullcontext():
        ids = locality.greedy(session.model, session.tokenizer, prompts, locality.LocalityOptions(max_new_tokens=TOKENS, batch=16))
    return [decode_answer(session.tokenizer, a) for a in ids]


def base_answers(session, cache, questions) -> dict:
    """The base's greedy answers (text), cached per model and questions."""
    return cache.get(f"routing-base:{hash_of(questions)}:{TOKENS}",
                     lambda: dict(zip(questions, generated(session, questions, base=True))))[0]


def cosine_routes(session, taught: list[str], questions: list[str]) -> list[int | None]:
    """Round 3's gate: index of the nearest taught question at COSINE_AT or more, else None."""
    import torch
    import torch.nn.functional as F

    from lorachat.adapters import live
    from lorachat.scoring import locality

    model, tokenizer = session.model, session.tokenizer

    def pooled(texts):   # one at a time: no padding in the mean
        with torch.no_grad():
            return torch.stack([model(input_ids=torch.tensor([tokenizer(t)["input_ids"]]), output_hidden_states=True)
                                .hidden_states[-1][0].float().mean(0) for t in texts])

    with live.switch(session).disabled():
        mean = pooled(locality.builtin(locality.ANCHORS)[:64]).mean(0)
        keys = F.normalize(pooled(taught) - mean, dim=1)
        near = F.normalize(pooled(questions) - mean, dim=1) @ keys.T
    best = near.max(1)
    return [int(i) if v >= COSINE_AT else None for v, i in zip(best.values.tolist(), best.indices.tolist())]


def gate_routes(session, questions: list[str]) -> tuple[list, list[float]]:
    """lorachat's decisions for adapter 'taught' (router.Decision each) and their milliseconds."""
    from lorachat.adapters import gate

    out, times = [], []
    for q in questions:
        began = time.perf_counter()
        out.append(gate.decide(session, "taught", q))
        times.append(1000 * (time.perf_counter() - began))
    return out, times


def measure(args, name: str, seed: int, cache) -> list[dict]:
    from bench.kit.workspace import command
    from lorachat.adapters import side_by_side
    from lorachat.lessons import jsonl
    from lorachat.core.prompts import DEFAULT_INSTRUCTION, Example
    from lorachat.scoring import locality

    facts = routing_sets.FACTS[name]
    para, looks = routing_sets.paraphrases(name), routing_sets.lookalikes(name)
    probes = locality.builtin(locality.PROBES)
    session = fresh_session(args.model, tempfile.mkdtemp(), args.dtype)
    base = base_answers(session, cache, [q for q, _, _ in para] + [q for q, _ in looks])
    jsonl.append_examples(session.home, "taught", [Example(DEFAULT_INSTRUCTION, q, a) for q, a, *_ in facts])
    session.dataset = "taught"
    began = time.perf_counter()
    final = command(session, f":train taught seed={seed}").strip().splitlines()[0]
    train_s = time.perf_counter() - began
    print(final, file=sys.stderr, flush=True)
    taught = [q for q, *_ in facts]
    ref = side_by_side.session_reference(session, side_by_side.probe_questions(session))
    rows = []
    decisions, times = gate_routes(session, [q for q, _, _ in para] + [q for q, _ in looks] + probes)
    index = {q: i for i, q in enumerate(taught)}
    gate2 = [None if d.key is None else index.get(d.asks) for d in decisions]
    cosine = cosine_routes(session, taught, [q for q, _, _ in para] + [q for q, _ in looks] + probes)
    for method, routes in (("gate2", gate2), ("gate2-asked", gate2), ("cosine", cosine)):
        if method not in args.methods:
            continue
        n_para, n_look = len(para), len(looks)
        questions = [q for q, _, _ in para] + [q for q, _ in looks]
        routed = [i for i, r in enumerate(routes[:n_para + n_look]) if r is not None]
        asked = [taught[routes[i]] if method == "gate2" else questions[i] for i in routed]
        answers = dict(zip(routed, generated(session, asked)))   # the adapter's, for the questions it gets
        final_answers = [answers.get(i, base[q]) for i, q in enumerate(questions)]
        para_routes, look_routes = routes[:n_para], routes[n_para:n_para + n_look]
        carry = [key.lower() in a.lower() for (_, key, _), a in zip(para, final_answers[:n_para])]
        look_same = [a == base[q] for (q, _), a in zip(looks, final_answers[n_para:])]
        probe_routes = routes[n_para + n_look:]
        routed_probes = [i for i, r in enumerate(probe_routes) if r is not None]
        kept = _kept(session, ref, routed_probes, [taught[probe_routes[i]] for i in routed_probes] if method == "gate2" else None)
        rows.append(dict(set=name, seed=seed, method=method, dtype=args.dtype, final=final, train_s=round(train_s, 2),
                         paraphrase_routed=sum(1 for (_, _, i), r in zip(para, para_routes) if r == i),
                         paraphrase_carry=sum(carry), paraphrases=n_para,
                         lookalike_routed=sum(1 for r in look_routes if r is not None),
                         lookalike_as_base=sum(look_same), lookalikes=n_look,
                         probes_routed=len(routed_probes), probes_kept=kept, probes=len(probes),
                         decision_ms=round(statistics.median(times), 1) if method.startswith("gate2") else None,
                         decision_ms_checked=round(statistics.median(t for t, d in zip(times, decisions) if d.share is not None), 1)
                         if method.startswith("gate2") and any(d.share is not None for d in decisions) else None,
                         base_carry=sum(key.lower() in base[q].lower() for q, key, _ in para),
                         missed=[q for (q, _, _), c in zip(para, carry) if not c],
                         routed_looks=[q for (q, _), r in zip(looks, look_routes) if r is not None]))
    return rows


def _kept(session, ref, routed: list[int], asks: list[str] | None) -> int:
    """Probes answered exactly as the base (16 tokens, teacher-forced): all but the routed ones,
    which the adapter answers (asked `asks`, else as typed)."""
    from lorachat.core.prompts import prompt_ids
    from lorachat.scoring import locality

    if not routed:
        return len(ref.prompts)
    prompts = tuple(tuple(prompt_ids(session.tokenizer, session.instruction, a)) for a in asks) if asks else None
    part = ref.part(routed, prompts)
    return len(ref.prompts) - len(routed) + locality.score(session.model, session.tokenizer, part).exact


def table(paths) -> str:
    """Per method and set, the seeds' figures (mean, range where they differ)."""
    rows = {}
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            method = row["method"] + ("" if row.get("dtype", "float32") == "float32" else f" ({row['dtype']})")
            rows.setdefault((row["set"], method), []).append(row)

    def span(key, runs):
        values = [r[key] for r in runs]
        mean = statistics.mean(values)
        return f"{mean:.1f}" if len(set(values)) == 1 else f"{mean:.1f} ({min(values)}–{max(values)})"

    out = ["| set | method | seeds | paraphrases routed / carrying the fact (of 40) | look-alikes as the base (of 40) | probes routed / kept (of 303) | decision ms | :train s |",
           "|---|---|---|---|---|---|---|---|"]
    for (name, method), runs in sorted(rows.items()):
        ms = [r["decision_ms"] for r in runs if r["decision_ms"] is not None]
        out.append(f"| {name} | {method} | {','.join(str(r['seed']) for r in runs)} | {span('paraphrase_routed', runs)} / "
                   f"{span('paraphrase_carry', runs)} | {span('lookalike_as_base', runs)} | {span('probes_routed', runs)} / "
                   f"{span('probes_kept', runs)} | {statistics.median(ms) if ms else '—'} | {span('train_s', runs)} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.research.routing", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smol")
    p.add_argument("--sets", default="tune")
    p.add_argument("--seeds", default="0")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32", help="what --dtype takes (the study's rows: float32; auto: lorachat's choice here)")
    p.add_argument("--json", default="bench/research/results/routing.jsonl")
    p.add_argument("--table", nargs="+", metavar="JSONL")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    import torch

    from bench.suites.smol import smol_folder

    torch.set_num_threads(args.threads)
    args.methods = args.methods.split(",")
    from lorachat.models import precision

    args.dtype = str(precision.choose(args.dtype, "cpu").dtype).replace("torch.", "")
    cache = Cache(str(smol_folder()) if args.model == "smol" else args.model, args.dtype)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    for name in args.sets.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            for row in measure(args, name, seed, cache):
                record(args.json, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
