"""The issue's targets (CPU, 2 cores, same run), checked against one run's figures.

Each target is (figure, text, check); a figure that is missing (null) fails its target.
Knows nothing about how figures are measured.
"""

TARGETS = [
    ("train_speedup", ">= 5", lambda f: f["train_speedup"] >= 5),
    ("train_lorachat_loss", "<= train_seed_loss", lambda f: f["train_lorachat_loss"] <= f["train_seed_loss"]),
    ("recall_seconds", "<= 20 (10/10 recalled)", lambda f: f["recall_seconds"] <= 20),
    ("decode_ratio", ">= 0.97", lambda f: f["decode_ratio"] >= 0.97),
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


def check(figures: dict) -> list[dict]:
    rows = []
    for key, text, test in TARGETS:
        try:
            met = bool(test(figures))
        except (KeyError, TypeError):  # a figure not measured (missing or null)
            met = False
        rows.append(dict(figure=key, value=figures.get(key), target=text, met=met))
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| figure | value | target | met |", "|---|---|---|---|"]
    lines += [f"| `{r['figure']}` | {r['value']} | {r['target']} | {'yes' if r['met'] else '**no**'} |" for r in rows]
    return "\n".join(lines)
