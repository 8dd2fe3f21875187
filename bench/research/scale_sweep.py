"""What a scaled-down adapter keeps without the gate, and what it costs (issue 36).

    python -m bench.research.scale_sweep --facts held --method travel --seeds 0,1,2 --scales 1,0.8
    python -m bench.research.scale_sweep --facts pairs --first 2 --method null_space=0.05 --seeds 0,1 --scales 1

Trains one adapter per seed with `:train`'s loop (smol_locality's methods and facts), then for each
LoRA scale (what `:scale NAME S` sets before `:export`, which merges at the live scale) measures with
no gate: verbatim (the taught questions asked, answers of up to 64 tokens, in one batch), kept and
agree on the 303 probes, the median length of 40 answers of up to 96 tokens over the base's, those
answers unchanged to the last token (and to their 64th, the REPL's max_new_tokens), and paraphrases
carrying the fact. `--first N` teaches only the
set's first N facts (and scores only their paraphrases): what a user teaching a couple of facts gets.
One JSON line per (seed, scale) on stdout and appended to --json.
"""
import argparse
import copy
import json
import statistics
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.research.scale_sweep", description=__doc__.splitlines()[0])
    p.add_argument("--facts", default="tune", choices=("pairs", "tune", "held"))
    p.add_argument("--first", type=int, default=None, help="teach only the first N facts")
    p.add_argument("--method", default="travel", help="a smol_locality method (travel, now, null_space=0.05, ...)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--scales", default="1,0.8,0.6")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="auto", help="what --dtype takes (auto: lorachat's choice here, bf16)")
    p.add_argument("--json", default="bench/research/results/scale_sweep.jsonl")
    args = p.parse_args(argv)
    import torch

    from bench.research import smol_locality as S
    from bench.suites.smol import smol_folder
    from lorachat.core.prompts import DEFAULT_INSTRUCTION, Example
    from lorachat.models.loader import load_model
    from lorachat.scoring import locality
    from lorachat.training import lora, trainer

    torch.set_num_threads(args.threads)
    folder = str(smol_folder())
    loaded = load_model(folder, device="cpu", dtype=args.dtype)
    base, tokenizer = loaded.model, loaded.tokenizer
    cache = S.Cache(folder, str(loaded.dtype)[6:])
    pairs, paraphrases = S.facts(args.facts)
    if args.first:
        pairs, paraphrases = pairs[:args.first], [p for p in paraphrases if p[2] < args.first]
    figures = S.base_figures(base, tokenizer, cache, 303, 40, paraphrases)
    eos = tokenizer.eos_token_id
    for seed in (int(s) for s in args.seeds.split(",")):
        config = S.config_for(args.method, dict(seed=seed))
        model = lora.wrapped(copy.deepcopy(base), config)
        examples = [Example(instruction=DEFAULT_INSTRUCTION, input=q, output=a) for q, a in pairs]
        plan, anchors, _ = S.planned(model, base, tokenizer, cache, examples, config)
        result = trainer.run(model, tokenizer, plan, anchors=anchors)
        model.eval()
        layers = [m for m in model.modules() if isinstance(getattr(m, "scaling", None), dict) and m.scaling]
        trained = [dict(m.scaling) for m in layers]
        for scale in (float(s) for s in args.scales.split(",")):
            for module, scaling in zip(layers, trained):
                module.scaling.update({k: v * scale for k, v in scaling.items()})
            taught = S.answers(model, tokenizer, [q for q, _ in pairs], S.PARAPHRASE_TOKENS)
            verbatim = sum(tokenizer.decode(t, skip_special_tokens=True).strip() == a for t, (_, a) in zip(taught, pairs))
            scored = locality.score(model, tokenizer, figures["ref"])
            long = S.answers(model, tokenizer, locality.builtin(locality.PROBES)[:40], S.LENGTH_TOKENS)
            para = S.answers(model, tokenizer, [q for q, _, _ in paraphrases], S.PARAPHRASE_TOKENS)
            median = statistics.median(S.length(a, eos) for a in long)
            row = dict(facts=args.facts, first=args.first, method=args.method, dtype=str(loaded.dtype)[6:], seed=seed,
                       steps=result.steps,
                       recall=result.recall, scale=scale, verbatim=verbatim, of=len(pairs), kept=round(scored.kept, 4),
                       agree=round(scored.agreement, 4), length_ratio=round(median / figures["median"], 3),
                       same96=sum(a == b for a, b in zip(long, figures["long"])),
                       same64=sum(a[:64] == b[:64] for a, b in zip(long, figures["long"])),   # the REPL's max_new_tokens
                       paraphrase=sum(S.paraphrase_hits(tokenizer, para, paraphrases)), paraphrase_of=len(paraphrases))
            print(json.dumps(row), flush=True)
            with open(args.json, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
