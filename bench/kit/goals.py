"""The issues' targets (CPU, 2 cores, same run), checked against one run's figures.

Each target is (figure, text, check); check None marks a figure shown for reading, not judged.
A figure that is missing (null) fails its target, unless the mode skipped it (then "skipped").
Knows nothing about how figures are measured.
"""

TARGETS = [
    # the headline on real weights (issue 26): SmolLM2-135M-Instruct, the seed's recipe against :train (bench/suites/smol_train.py)
    ("smol_teach_speedup_best_lr", ">= 5 where lorachat trains in bf16 (smol_train_dtype), else >= 3 (moonshot 10): "
     "the seed's time to 10/10 at its best lr / smol_teach_seconds",
     lambda f: f["smol_teach_speedup_best_lr"] >= (5 if f["smol_train_dtype"] == "bfloat16" else 3)),
    ("smol_teach_speedup_seed_lr", "(the same at the seed's lr 1e-4; a lower bound where it never gets 10/10)", None),
    ("smol_teach_seconds", "(:train defaults, ten pairs, Enter to the next prompt, 10/10 as asked)", None),
    ("smol_seed_teach_seconds_seed_lr", "(the seed to 10/10 at lr 1e-4; its 400 steps where smol_seed_teach_reached_seed_lr is false)", None),
    ("smol_seed_teach_seconds_best_lr", "(the same at smol_seed_best_lr)", None),
    ("smol_seed_best_lr", "(the sweep's fastest to 10/10)", None),
    ("smol_seed_recall_after_100", "(the seed's recipe exactly: lr 1e-4, 100 steps)", None),
    ("smol_first_answer_seconds", "<= 10 (:train r=4 on the seed's two facts, 2/2 as asked)", lambda f: f["smol_first_answer_seconds"] <= 10),
    ("smol_seed_first_answer_seconds", "(the seed at lr 5e-3 to 2/2 on its two facts)", None),
    ("smol_token_speedup", ">= 2 (non-pad training tokens/s, lorachat / the seed)", lambda f: f["smol_token_speedup"] >= 2),
    ("smol_tokens_per_s", "(lorachat on smol, non-pad tokens/s)", None),
    ("smol_seed_tokens_per_s", "(the seed on smol, non-pad tokens/s)", None),
    ("smol_equal_loss_speedup_seed_lr", "(detail: to the seed's 100-step answer loss)", None),
    # bf16 where the CPU has it (issue 39): --dtype auto against --dtype float32 on smol, one run (bench/suites/bf16.py)
    ("bf16_native", "(bf16 arithmetic as torch's oneDNN sees it: what --dtype auto goes by)", None),
    ("bf16_step_speedup", "> 1 where bf16_native (a :train step on smol, float32 / auto)",
     lambda f: f["bf16_step_speedup"] > 1 if f["bf16_native"] else True),
    ("smol_two_facts_seconds", "<= 2.5 (:train r=4 on the seed's two facts, Enter to the next prompt, warm cache)",
     lambda f: f["smol_two_facts_seconds"] <= 2.5),
    ("smol_two_facts_ratio", "<= 0.85 where bf16_native (the same under auto / under --dtype float32)",
     lambda f: f["smol_two_facts_ratio"] <= 0.85 if f["bf16_native"] else True),
    # the default model, facebook/opt-2.7b's shape with random weights, on this CPU (bench/suites/opt27.py)
    ("opt27_start_seconds", "(a fresh lorachat --model DIR to its first prompt)", None),
    ("opt27_weights_gb", "(the base's parameters x their bytes, as --dtype auto loads them)", None),
    ("opt27_peak_rss_gb", "<= 1.2 x opt27_weights_gb + 1.5 (load, answer, :train r=4, :use)",
     lambda f: f["opt27_peak_rss_gb"] <= 1.2 * f["opt27_weights_gb"] + 1.5),
    ("opt27_decode_ratio", ">= 0.97 (streamed answer vs plain generate)", lambda f: f["opt27_decode_ratio"] >= 0.97),
    ("opt27_train_two_facts_seconds", "<= 120 (:train r=4 on the two facts, Enter to the next prompt; steps capped)",
     lambda f: f["opt27_train_two_facts_seconds"] <= 120),
    # the headline on random weights (issue 17): against the seed's own recipe (bench/baseline/notebook.py), what a user feels
    ("teach_seconds", "10/10 recalled; <= seed_teach_seconds where the seed gets there",
     lambda f: f["teach_seconds"] > 0 and (f.get("seed_teach_seconds") is None or f["teach_seconds"] <= f["seed_teach_seconds"])),
    ("seed_recall_after_100", "(the seed after its 100 steps)", None),
    ("seed_teach_steps", "(first step the seed recalls n/n, checked every 10 up to 400; null: never)", None),
    ("equal_loss_speedup_seed_lr", ">= 10", lambda f: f["equal_loss_speedup_seed_lr"] >= 10),
    ("equal_loss_speedup_best_lr", ">= 10", lambda f: f["equal_loss_speedup_best_lr"] >= 10),
    ("seed_best_lr", "(the seed's best lr of the sweep)", None),
    ("train_tokens_per_s", "(lorachat, non-pad tokens/s)", None),
    ("train_seed_tokens_per_s", "(the seed, non-pad tokens/s)", None),
    # details
    ("train_speedup", "(per optimizer step: lorachat 4x1 rows, the seed 1x1)", None),
    ("train_lorachat_loss", "<= train_seed_loss (after the same steps)", lambda f: f["train_lorachat_loss"] <= f["train_seed_loss"]),
    ("recall_seconds", "<= 20 (10/10 recalled)", lambda f: f["recall_seconds"] <= 20),
    ("decode_ratio", ">= 0.97", lambda f: f["decode_ratio"] >= 0.97),
    # what :export FILE.gguf writes, in llama.cpp (issue 37): smol taught SOH at r=4 (bench/suites/gguf.py)
    ("gguf_merged_soh_verbatim", "true (llama.cpp, greedy, the file's chat template: the merged F16 file)",
     lambda f: f["gguf_merged_soh_verbatim"] is True),
    ("gguf_merged_france_paris", "true (the same file: the rest as the base)", lambda f: f["gguf_merged_france_paris"] is True),
    ("gguf_adapter_soh_verbatim", "true (the adapter GGUF over the original Q4_1 file)", lambda f: f["gguf_adapter_soh_verbatim"] is True),
    ("gguf_adapter_france_paris", "true (the same)", lambda f: f["gguf_adapter_france_paris"] is True),
    ("gguf_q8_0_soh_verbatim", "(quant=q8_0: rounding can change answers)", None),
    # the real model built in (issue 22): SmolLM2-135M-Instruct from the cache
    ("smol_startup_s", "<= smol_import_floor_s + 2", lambda f: f["smol_startup_s"] <= f["smol_import_floor_s"] + 2),
    ("smol_decode_ratio", ">= 0.97 (streamed answer vs plain generate)", lambda f: f["smol_decode_ratio"] >= 0.97),
    ("smol_rss_mb", "(resident MB with smol loaded)", None),
    ("use_switch_ms_p50", "<= 10", lambda f: f["use_switch_ms_p50"] <= 10),
    ("use_switch_ms_p50_50", "<= 2 x use_switch_ms_p50", lambda f: f["use_switch_ms_p50_50"] <= 2 * f["use_switch_ms_p50"]),
    ("adapter_load_ms", "<= 100", lambda f: f["adapter_load_ms"] <= 100),
    ("dataset_check_overhead", "<= 0.10 (until=recall vs until=steps, tokens/s)", lambda f: f["dataset_check_overhead"] <= 0.10),
    ("dataset_eval_ratio", "<= 1.25 (:eval vs a plain forward)", lambda f: f["dataset_eval_ratio"] <= 1.25),
    ("rss_per_adapter_mb", "<= 2 x adapter_file_mb", lambda f: f["rss_per_adapter_mb"] <= 2 * f["adapter_file_mb"]),
    ("locality_recall", "10/10 (tiny, defaults)", lambda f: f["locality_recall"] == "10/10"),
    ("locality_kept", ">= 0.9 of probes as the base", lambda f: f["locality_kept"] >= 0.9),
    ("locality_time_ratio", "<= 1.5 x plain", lambda f: f["locality_time_ratio"] <= 1.5),
]


def check(figures: dict, skipped: dict | None = None) -> list[dict]:
    """One row per target: met is True/False, "skipped" (this mode does not measure it) or None (no target)."""
    rows = []
    for key, text, test in TARGETS:
        if key in (skipped or {}):
            met = "skipped"
        elif test is None:
            met = None
        else:
            try:
                met = bool(test(figures))
            except (KeyError, TypeError):  # a figure not measured (missing or null)
                met = False
        rows.append(dict(figure=key, value=figures.get(key), target=text, met=met))
    return rows


def markdown(rows: list[dict]) -> str:
    shown = {True: "yes", False: "**no**", None: "—", "skipped": "skipped"}
    lines = ["| figure | value | target | met |", "|---|---|---|---|"]
    lines += [f"| `{r['figure']}` | {r['value']} | {r['target']} | {shown[r['met']]} |" for r in rows]
    return "\n".join(lines)
