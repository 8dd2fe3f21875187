"""Locality on a real model (issue 25): what each way of teaching ten facts keeps of SmolLM2-135M-Instruct.

    python -m bench.research.smol_locality --model smol --methods plain,defaults --probes 60 --seeds 0
    python -m bench.research.smol_locality --two-fact --methods defaults      the seed's two facts at r=4

Every method is `:train`'s own loop (lorachat.train.run) with TrainConfig overrides, on a fresh
adapter over the same base, teaching the ten pairs of bench/shapes.py until every answer comes back
verbatim as asked (capped at --cap steps). Per method:
- efficacy: k/10 verbatim as asked (trainer.run's final recall, exact for greedy decoding);
- kept / agree: lorachat.locality.score on the first --probes built-in probes (16 tokens, greedy);
- length: median tokens to EOS of greedy answers (at most 96) to the first --length probes,
  against the base's median on the same questions;
- paraphrase: of the 20 questions below (two per pair, in other words), how many greedy answers
  (at most 64 tokens) contain their key term (case-insensitive); the base is scored too;
- steps and seconds: trainer.run's (1 thread; the anchors' base answers are made once per base and
  cached, their one-off cost reported as anchor_ref_s).
The base's answers (probes, lengths, paraphrases, anchors) are cached under
$LORACHAT_CACHE/smol_locality/. Knows nothing about the REPL.
"""
import argparse
import copy
import dataclasses
import hashlib
import json
import os
import pickle
import statistics
import sys
import time
from pathlib import Path

from bench.kit.pairs import PARAPHRASES
from lorachat.core.prompts import DEFAULT_INSTRUCTION, Example, prompt_ids
from lorachat.scoring import locality
from lorachat.training import lora, planning, recipe, trainer

# the two-fact check: the seed's facts at r=4, and two questions whose answers must not move
UNCHANGED = ["What is the capital of France?", "Who wrote Hamlet?"]
LENGTH_TOKENS, PARAPHRASE_TOKENS = 96, 64

# name -> TrainConfig overrides (`:train` keys); plain = the PEFT notebook's LoRA on q,k,v, no anchors
# defaults: :train's before this study (6232c72), spelled out so the name keeps its meaning
METHODS = {
    "plain": dict(anchors=0, context=0, targets="q_proj,k_proj,v_proj"),
    "defaults": dict(anchors=4, anchor_every=2, anchor_weight=0.3, anchor_tokens=16, anchor_loss="ce", targets="fc1"),
    "kl32": dict(anchors=2, anchor_every=2, anchor_weight=1.0, anchor_tokens=32, anchor_loss="kl", targets="fc1"),
    # with the ask-time gate keeping unrelated answers: no rehearsal, no conversation copies, lr 3e-3
    "lean": dict(anchors=0, context=0, lr=3e-3, targets="fc1"),
    "now": {},   # :train's defaults as they are today
    "travel": dict(travel=True),   # :train travel=on as it is today (an adapter meant to be served without the gate)

}


def config_for(name: str, extra: dict) -> recipe.TrainConfig:
    overrides = dict(METHODS[name]) if name in METHODS else parse_method(name)
    return dataclasses.replace(recipe.DEFAULTS, **(overrides | extra))


def parse_method(text: str) -> dict:
    """An ad-hoc method: key=value pairs joined by '+' (e.g. anchors=8+anchor_weight=1); ':' in a
    value stands for ',' (targets=q_proj:v_proj), since methods are a comma list."""
    from lorachat.chat import options

    out, raw = {}, {}
    for part in text.replace(":", ",").split("+"):
        if part in METHODS:
            out |= METHODS[part]
            continue
        key, _, value = part.partition("=")
        raw[key] = value
    parsed = options.apply_kv(recipe.DEFAULTS, raw)     # the REPL's own parsing and checks
    return out | {key: getattr(parsed, key) for key in raw}


# --- the base's answers, cached ----------------------------------------------------------------

class Cache:
    def __init__(self, model_path: str, dtype: str = "float32"):
        root = Path(os.environ.get("LORACHAT_CACHE", Path.home() / ".cache" / "lorachat")) / "smol_locality"
        weights = Path(model_path) / "model.safetensors"
        stamp = f"{Path(model_path).resolve()}:{weights.stat().st_size}:{weights.stat().st_mtime_ns}"
        if dtype != "float32":   # another dtype's base answers differ (float32's key is the one kept before)
            stamp += f":{dtype}"
        self.root = root / hashlib.sha256(stamp.encode()).hexdigest()[:16]
        self.root.mkdir(parents=True, exist_ok=True)

    def get(self, key: str, make):
        """(value, seconds it took to make; 0 when cached earlier)."""
        path = self.root / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".pkl")
        if path.exists():
            stored = pickle.loads(path.read_bytes())
            return stored["value"], stored["seconds"]
        began = time.perf_counter()
        value = make()
        seconds = time.perf_counter() - began
        path.write_bytes(pickle.dumps(dict(key=key, value=value, seconds=seconds)))
        return value, seconds


def asked_prompts(tokenizer, questions) -> list:
    return [prompt_ids(tokenizer, DEFAULT_INSTRUCTION, q) for q in questions]


def answers(model, tokenizer, questions, tokens: int) -> list:
    return locality.greedy(model, tokenizer, asked_prompts(tokenizer, questions),
                           locality.LocalityOptions(max_new_tokens=tokens))


def length(answer, eos) -> int:
    """Tokens before EOS (all of them when the answer ran to the limit)."""
    return len(answer) - 1 if answer and answer[-1] == eos else len(answer)


def first_sentence_only(tokenizer, answer) -> bool:
    """Whether a greedy answer stops (EOS) right after its first sentence."""
    eos = tokenizer.eos_token_id
    if not answer or answer[-1] != eos:
        return False
    text = tokenizer.decode(answer[:-1], skip_special_tokens=True).strip()
    ends = [i for i, c in enumerate(text) if c in ".!?" and (i + 1 == len(text) or text[i + 1] in " \n")]
    return len(ends) == 1 and ends[0] == len(text) - 1


def paraphrase_hits(tokenizer, answered, paraphrases=PARAPHRASES) -> list[bool]:
    return [key.lower() in tokenizer.decode(a, skip_special_tokens=True).lower()
            for (_, key, _), a in zip(paraphrases, answered)]


def base_figures(base, tokenizer, cache, probes: int, lengths: int, paraphrases=PARAPHRASES) -> dict:
    questions = locality.builtin(locality.PROBES)
    ref, ref_s = cache.get(f"probes:{probes}:16:predicted", lambda: locality.reference(
        base, tokenizer, [(DEFAULT_INSTRUCTION, q) for q in questions[:probes]]))
    long, _ = cache.get(f"length:{lengths}:{LENGTH_TOKENS}",
                        lambda: answers(base, tokenizer, questions[:lengths], LENGTH_TOKENS))
    para, _ = cache.get(f"paraphrase:{hash_of(paraphrases)}:{PARAPHRASE_TOKENS}",
                        lambda: answers(base, tokenizer, [q for q, _, _ in paraphrases], PARAPHRASE_TOKENS))
    unchanged, _ = cache.get(f"unchanged:{hash_of(UNCHANGED)}:{LENGTH_TOKENS}",
                             lambda: answers(base, tokenizer, UNCHANGED, LENGTH_TOKENS))
    return dict(ref=ref, ref_s=ref_s, long=long, para=para, unchanged=unchanged,
                median=statistics.median(length(a, tokenizer.eos_token_id) for a in long))


def hash_of(value) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:12]


def anchor_reference(base, tokenizer, cache, config):
    """The base's answers to the anchor pool at config.anchor_tokens (as trainer.run makes them), cached."""
    options = locality.LocalityOptions(max_new_tokens=config.anchor_tokens)
    return cache.get(f"anchors:{config.anchor_pool}:{config.anchor_tokens}:questions", lambda: locality.anchor_reference(
        base, tokenizer, DEFAULT_INSTRUCTION, config.anchor_pool, options))


def planned(model, base, tokenizer, cache, examples, config):
    """(the Plan, the anchors' reference or None, the seconds it took to make) as `:train` works them
    out (commands/train.py): the conversation copies after anchor turns where the model has a template."""
    plan = planning.plan(model, tokenizer, examples, config)
    resolved = plan.config
    if not (resolved.anchors or resolved.context or resolved.null_space):   # null_space: measured on the anchors
        return plan, None, 0.0
    anchors, anchor_s = anchor_reference(base, tokenizer, cache, resolved)
    if resolved.context:
        questions = [q for _, q in locality.anchor_questions(DEFAULT_INSTRUCTION, resolved.anchor_pool)]
        plan = planning.in_context(model, tokenizer, plan, locality.as_turns(tokenizer, questions, anchors))
    return plan, (anchors if resolved.anchors or resolved.null_space else None), anchor_s


# --- one method, measured ----------------------------------------------------------------------

def gate_figures(model, tokenizer, figures, pairs, long, hits, lengths, paraphrases=PARAPHRASES) -> dict:
    """What lorachat's ask-time gate (bench/research/gate.py: lorachat/routing on this bare model)
    makes of the same adapter: a question it routes is answered by the adapter asked the taught
    question it matches, the rest exactly as the base did; kept, paraphrase and length so."""
    from bench.research.gate import asked_as

    probes = locality.builtin(locality.PROBES)[:len(figures["ref"].prompts)]
    probe_asks = asked_as(model, tokenizer, pairs, probes)
    para_asks = asked_as(model, tokenizer, pairs, [q for q, _, _ in paraphrases])
    routed = [i for i, a in enumerate(probe_asks) if a is not None]
    exact = locality.score(model, tokenizer, figures["ref"].part(
        routed, [tuple(p) for p in asked_prompts(tokenizer, [probe_asks[i] for i in routed])])).exact if routed else 0
    base_hits = paraphrase_hits(tokenizer, figures["para"], paraphrases)
    para = [base_hits[k] if a is None else paraphrase_hits(tokenizer, answers(model, tokenizer, [a], PARAPHRASE_TOKENS),
                                                           paraphrases[k:k + 1])[0]
            for k, a in enumerate(para_asks)]
    eos = tokenizer.eos_token_id
    lens = [length(figures["long"][i] if probe_asks[i] is None else answers(model, tokenizer, [probe_asks[i]], LENGTH_TOKENS)[0], eos)
            for i in range(lengths)]
    return {"gate": dict(routed=len(routed), kept=round((len(probes) - len(routed) + exact) / len(probes), 4),
                         paraphrase=sum(para), paraphrase_routed=sum(a is not None for a in para_asks),
                         length_ratio=round(statistics.median(lens) / figures["median"], 3))}


def measure(base, tokenizer, cache, figures, pairs, name: str, config, lengths: int, log, gate=False,
            paraphrases=PARAPHRASES) -> dict:
    model = lora.wrapped(copy.deepcopy(base), config)
    examples = [Example(instruction=DEFAULT_INSTRUCTION, input=q, output=a) for q, a in pairs]
    plan, anchors, anchor_s = planned(model, base, tokenizer, cache, examples, config)
    resolved = plan.config

    def progress(step, total, loss, known, kept):
        if step % 10 == 0:
            log(f"  {name}: step {step}, loss {loss:.3f}, known {known}")

    cpu = time.process_time()
    result = trainer.run(model, tokenizer, plan, on_step=progress, anchors=anchors)
    cpu = time.process_time() - cpu   # 1 thread: CPU seconds, less at the mercy of the neighbours than wall time
    model.eval()
    scored = locality.score(model, tokenizer, figures["ref"])
    eos = tokenizer.eos_token_id
    long = answers(model, tokenizer, locality.builtin(locality.PROBES)[:lengths], LENGTH_TOKENS)
    para = answers(model, tokenizer, [q for q, _, _ in paraphrases], PARAPHRASE_TOKENS)
    hits = paraphrase_hits(tokenizer, para, paraphrases)
    median = statistics.median(length(a, eos) for a in long)
    same = [a == b for a, b in zip(long, figures["long"])]
    one_sentence = sum(first_sentence_only(tokenizer, a) for a in long)   # why answers shorten: the EOS after one
    routing = gate_figures(model, tokenizer, figures, pairs, long, hits, lengths, paraphrases) if gate else {}
    return routing | dict(method=name, seed=config.seed, recall=result.recall, total=result.total,
                kept=round(scored.kept, 4), agree=round(scored.agreement, 4), probes=scored.questions,
                median=median, base_median=figures["median"], length_ratio=round(median / figures["median"], 3),
                same96=sum(same), lengths=len(long), one_sentence=one_sentence,
                base_one_sentence=sum(first_sentence_only(tokenizer, a) for a in figures["long"][:lengths]),
                paraphrase=sum(hits), paraphrase_of=len(hits), hits=[i for i, h in enumerate(hits) if h],
                steps=result.steps, seconds=round(result.seconds, 2), cpu_s=round(cpu, 2), check_s=round(result.check_seconds, 2),
                anchor_ref_s=round(anchor_s, 2), loss=round(result.loss, 4), lr=resolved.lr,
                config={k: v for k, v in dataclasses.asdict(resolved).items() if getattr(recipe.DEFAULTS, k) != v or k in ("lr",)})


def two_fact(base, tokenizer, cache, figures, name: str, config, log) -> dict:
    """The seed's two facts (PAIRS[:2]) at r=4: verbatim, each without the other's words, and the
    Paris and Hamlet answers as the base gave them (whole answers, up to 96 tokens)."""
    from bench.kit.pairs import PAIRS

    config = dataclasses.replace(config, r=4)
    model = lora.wrapped(copy.deepcopy(base), config)
    examples = [Example(instruction=DEFAULT_INSTRUCTION, input=q, output=a) for q, a in PAIRS[:2]]
    plan, anchors, anchor_s = planned(model, base, tokenizer, cache, examples, config)
    cpu = time.process_time()
    result = trainer.run(model, tokenizer, plan, anchors=anchors)
    cpu = time.process_time() - cpu
    model.eval()
    taught = answers(model, tokenizer, [q for q, _ in PAIRS[:2]], PARAPHRASE_TOKENS)
    texts = [tokenizer.decode(a, skip_special_tokens=True).strip() for a in taught]
    crossed = ["oxynitride" in texts[0].lower() or "sion" in texts[0].lower(),
               "hardmask" in texts[1].lower() or "soh" in texts[1].lower()]
    after = answers(model, tokenizer, UNCHANGED, LENGTH_TOKENS)
    para = answers(model, tokenizer, [q for q, _, i in PARAPHRASES if i < 2], PARAPHRASE_TOKENS)
    hits = paraphrase_hits(tokenizer, para + [[]] * 16)[:4]
    scored = locality.score(model, tokenizer, figures["ref"])
    return dict(method=name, seed=config.seed, two_fact=True, recall=result.recall, total=result.total,
                verbatim=[t == a for t, (_, a) in zip(texts, PAIRS[:2])], crossed=crossed,
                unchanged=[a == b for a, b in zip(after, figures["unchanged"])],
                unchanged16=[a[:16] == b[:16] for a, b in zip(after, figures["unchanged"])],
                answers=[tokenizer.decode(a, skip_special_tokens=True) for a in after],
                paraphrase=sum(hits), kept=round(scored.kept, 4), agree=round(scored.agreement, 4),
                steps=result.steps, seconds=round(result.seconds, 2), cpu_s=round(cpu, 2), anchor_ref_s=round(anchor_s, 2))


def facts(name: str):
    """(the ten taught (question, answer) pairs, their paraphrases (question, key term, index))."""
    if name == "pairs":
        from bench.kit.pairs import PAIRS

        return PAIRS, PARAPHRASES
    from bench.research import routing_sets

    return routing_sets.pairs(name), routing_sets.paraphrases(name)


def table(paths) -> str:
    """A markdown table of the runs in `paths` (JSON lines): per method, the seeds' figures
    (mean, and the range where seeds differ)."""
    rows = {}
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if not row.get("two_fact"):
                rows.setdefault((row["method"], row["probes"]), []).append(row)

    def span(values, scale=1.0, digits=1):
        values = [v * scale for v in values]
        mean = f"{statistics.mean(values):.{digits}f}"
        return mean if len(set(values)) == 1 else f"{mean} ({min(values):.{digits}f}–{max(values):.{digits}f})"

    out = ["| method | seeds | probes | efficacy | kept exact % | agree % | length × base | paraphrase /20 | steps | CPU s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for (name, probes), runs in rows.items():
        out.append(f"| {name} | {','.join(str(r['seed']) for r in runs)} | {probes} | "
                   f"{', '.join(str(r['recall']) + '/10' for r in runs)} | {span([r['kept'] for r in runs], 100)} | "
                   f"{span([r['agree'] for r in runs], 100)} | {span([r['length_ratio'] for r in runs], 1, 2)} | "
                   f"{span([r['paraphrase'] for r in runs], 1, 1)} | {span([r['steps'] for r in runs], 1, 0)} | "
                   f"{span([r.get('cpu_s', r['seconds']) for r in runs], 1, 0)} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.research.smol_locality", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smol", help="what --model takes (default smol)")
    p.add_argument("--methods", default="plain,defaults",
                   help=f"comma list: {', '.join(METHODS)}, or key=value+key=value (TrainConfig keys)")
    p.add_argument("--probes", type=int, default=60, help="score kept/agree on the first N probes (303: all)")
    p.add_argument("--length", type=int, default=None, help="median length on the first N probes (default: --probes)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--cap", type=int, default=300, help="most steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="auto", help="what --dtype takes (default auto: lorachat's choice here)")
    p.add_argument("--two-fact", action="store_true", help="the seed's two facts at r=4 instead of the ten")
    p.add_argument("--facts", default="pairs", choices=("pairs", "tune", "held"),
                   help="the ten facts and their paraphrases: bench/kit/pairs.py's, or a set of bench/research/routing_sets.py")
    p.add_argument("--gate", action="store_true", help="also what the ask-time gate makes of each adapter (bench/research/gate.py)")
    p.add_argument("--base", action="store_true", help="print the base's figures (paraphrase answers) and stop")
    p.add_argument("--json", default="bench/research/results/smol_locality.jsonl", help="append one JSON line per run here")
    p.add_argument("--table", nargs="+", metavar="JSONL", help="print the markdown table of these results and stop")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    import torch

    from lorachat.models.loader import load_model

    torch.set_num_threads(args.threads)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    if args.model == "smol":   # its converted folder: what the cache keys on
        from bench.suites.smol import smol_folder

        args.model = str(smol_folder())
    loaded = load_model(args.model, device="cpu", dtype=args.dtype)
    base, tokenizer = loaded.model, loaded.tokenizer
    dtype = str(loaded.dtype).replace("torch.", "")
    cache = Cache(loaded.path, dtype)
    lengths = args.length or args.probes
    pairs, paraphrases = facts(args.facts)
    figures = base_figures(base, tokenizer, cache, args.probes, lengths, paraphrases)
    base_hits = paraphrase_hits(tokenizer, figures["para"], paraphrases)
    log(f"base: {args.probes} probes, median length {figures['median']} on {lengths}, paraphrase {sum(base_hits)}/20")
    if args.base:
        for (q, key, _), a, h in zip(paraphrases, figures["para"], base_hits):
            print(f"{'+' if h else '-'} {q} [{key}] -> {tokenizer.decode(a, skip_special_tokens=True)!r}")
        for q, a in zip(UNCHANGED, figures["unchanged"]):
            print(f"= {q} -> {tokenizer.decode(a, skip_special_tokens=True)!r}")
        return 0
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.methods.split(","):
            config = config_for(name, dict(seed=seed, steps=args.cap, until="recall", probes=0))
            if args.two_fact:
                row = two_fact(base, tokenizer, cache, figures, name, config, log)
            else:
                row = measure(base, tokenizer, cache, figures, pairs, name, config, lengths, log, args.gate, paraphrases)
            row |= dict(facts=args.facts, base_paraphrase=sum(base_hits), threads=args.threads,
                        load=os.getloadavg()[0], dtype=dtype)
            record(args.json, row)
    return 0


def record(path: str, row: dict) -> None:
    """Print one result row and append it to the JSON-lines file `path`."""
    print(json.dumps(row), flush=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
