"""smol_locality_*: what `:train`'s defaults keep of SmolLM2-135M-Instruct on questions they were not
taught (issue 25), with lorachat's ask-time gate, against the notebook's plain LoRA on q,k,v; the
ten pairs, until every answer comes back verbatim. The measurement is bench/research/smol_locality.py's
(its table in bench/RESULTS.md, "Locality on smol"); full runs only (about 10 minutes on 2 cores).

Per method: recall k/10; kept (exact, first 16 tokens, all 303 probes) as asking answers under the
gate (lorachat/routing, at its defaults) and without it (`:set gate=off`, what :export and vLLM
serve); agree (ungated); median answer length against the base's on the first 60 probes (gated);
paraphrases carrying the fact's key term (of 20, gated); steps and CPU seconds of training (2 threads).
And what leaves lorachat, without the gate: `:train travel=on` (smol_locality_travel_*) and
`:train null_space=0.05` (smol_locality_null_space_*): kept, agree, length and whole answers unchanged
on the first 60 probes, paraphrases as typed, and the time against the defaults'.
"""
from bench.research import smol_locality as research


def figures(mode, log=lambda text: None):
    if mode.name != "full":
        return {}, {"smol_locality_kept": "full runs only (ten facts on 303 probes: about 10 minutes)"}
    import torch

    from bench.kit.pairs import PAIRS
    from bench.suites.smol import smol_folder
    from lorachat.models.loader import load_model

    torch.set_num_threads(2)
    model = str(smol_folder())
    loaded = load_model(model, device="cpu")
    base, tokenizer = loaded.model, loaded.tokenizer
    cache = research.Cache(model, str(loaded.dtype).replace("torch.", ""))
    shown = research.base_figures(base, tokenizer, cache, 303, 60)
    out = {}
    for name, prefix in (("now", "smol_locality_"), ("plain", "smol_locality_plain_")):
        config = research.config_for(name, dict(seed=0, steps=300, until="recall", probes=0))
        row = research.measure(base, tokenizer, cache, shown, PAIRS, name, config, 60, log, gate=True)
        gated = row["gate"]
        out.update({prefix + "recall": f"{row['recall']}/{row['total']}", prefix + "kept": gated["kept"],
                    prefix + "kept_ungated": row["kept"], prefix + "agree_ungated": row["agree"],
                    prefix + "length_ratio": gated["length_ratio"], prefix + "paraphrase": gated["paraphrase"],
                    prefix + "routed": gated["routed"], prefix + "steps": row["steps"], prefix + "cpu_s": row["cpu_s"]})
    out["smol_locality_time_vs_plain"] = round(out["smol_locality_cpu_s"] / out["smol_locality_plain_cpu_s"], 2)
    # what leaves lorachat (issue 36), as :export, lorachat serve and a GGUF export serve it: no gate;
    # unchanged: the share of the first 60 probes whose whole greedy answer (96 tokens) is the base's
    for name, prefix in (("travel", "smol_locality_travel_"), ("null_space=0.05", "smol_locality_null_space_")):
        config = research.config_for(name, dict(seed=0, steps=300, until="recall", probes=0))
        row = research.measure(base, tokenizer, cache, shown, PAIRS, name, config, 60, log)
        out.update({prefix + "recall": f"{row['recall']}/{row['total']}", prefix + "kept_ungated": row["kept"],
                    prefix + "agree_ungated": row["agree"], prefix + "length_ratio_ungated": row["length_ratio"],
                    prefix + "unchanged_ungated": round(row["same96"] / row["lengths"], 3),
                    prefix + "paraphrase_ungated": row["paraphrase"], prefix + "steps": row["steps"],
                    prefix + "cpu_s": row["cpu_s"], prefix + "time_vs_now": round(row["cpu_s"] / out["smol_locality_cpu_s"], 2)})
    return out, {}
