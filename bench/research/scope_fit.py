"""A scope classifier over every measure the gate study read (issue 35, Build 1: "a small scope
classifier ... (SERAC)"): do the measures that each failed alone separate paraphrases from look-alikes
when weighed together?

    python -m bench.research.scope_fit

No model runs: it reads the per-question rows that contrast.py, token_drop.py, reverse_lift.py,
subject_null.py and lift_mask.py wrote to bench/research/results/ (bf16, the shipped shortlist and
its one checked key), 15 measures per question that reached the check. A logistic regression
(standardised measures, L2 weight `lam`, fitted with torch's LBFGS) is fitted on the tune set's
shortlisted questions, label 1 for a paraphrase checked against its own fact; its threshold is the
one that maximises paraphrases reaching their fact + look-alikes left to the base on the tune set
(among ties, the middle one).
The held half is reported with both chosen on tune. A question the shortlist stops goes to the base,
as in lorachat.
"""
import json
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
SOURCES = {"contrast": ("share", "relcov", "own_share", "first6", "outside5"),
           "token_drop": ("clipped", "mindrop", "negsum"),
           "reverse_lift": ("rev6", "rev12", "rev24"),
           "subject_null": ("subject", "relation"),
           "lift_mask": ("novel",)}
EVERY = tuple(m for measures in SOURCES.values() for m in measures)
GROUPS = {"share": ("share",), "share + coverage": ("share", "coverage"),
          "share + relation": ("share", "relation"),
          "share + answer's first tokens": ("share", "first6", "outside5"),
          "share + token by token": ("share", "clipped", "mindrop", "negsum"),
          "share + subject measures": ("share", "relation", "subject", "novel"),
          "every measure (15) + coverage": EVERY + ("coverage",),
          "no generated answer (11)": tuple(m for m in EVERY + ("coverage",) if not m.startswith(("rev", "own")))}
SHORTLIST = 0.4


def questions() -> dict:
    """{(set, kind, question): {measure: value, 'own': i, 'key': j, 'coverage': c}} from every file."""
    out: dict = {}
    for name, measures in SOURCES.items():
        for line in (RESULTS / f"{name}.jsonl").read_text().splitlines():
            row = json.loads(line)
            if "question" not in row:
                continue
            entry = out.setdefault((row["set"], row["kind"], row["question"]), {})
            entry.update({m: row[m] for m in measures if row.get(m) is not None})
            entry.update(own=row["own"], key=row["key"], coverage=row["coverage"])
    return out


def table(rows: dict, which: str, measures: tuple):
    x, label, kind, checked = [], [], [], []
    for (name, k, _), entry in rows.items():
        if name != which:
            continue
        complete = all(m in entry for m in measures)
        x.append([entry.get(m, 0.0) for m in measures])
        kind.append(k)
        label.append(k == "para" and entry["key"] == entry["own"])
        checked.append(complete and entry["coverage"] >= SHORTLIST)
    return np.array(x, float), np.array(label), np.array(kind), np.array(checked, bool)


def fit(x, y, lam: float):
    x, y = torch.tensor(x), torch.tensor(y, dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + lam * (w * w).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def counted(p, label, kind, checked, at: float) -> tuple:
    routed = checked & (p >= at)
    return (int((routed & label).sum()), int(((kind == "look") & ~routed).sum()),
            int(((kind == "probe") & routed).sum()))


def main() -> None:
    rows = questions()
    print("| measures | L2 | tune: paraphrases / look-alikes / probes routed | threshold | held |")
    print("|---|---|---|---|---|")
    for title, measures in GROUPS.items():
        for lam in (0.0, 0.01, 0.1):
            xt, yt, kt, ct = table(rows, "tune", measures)
            xh, yh, kh, ch = table(rows, "held", measures)
            mu, sd = xt[ct].mean(0), xt[ct].std(0) + 1e-9
            w, b = fit(((xt - mu) / sd)[ct], yt[ct], lam)
            pt = 1 / (1 + np.exp(-(((xt - mu) / sd) @ w + b)))
            ph = 1 / (1 + np.exp(-(((xh - mu) / sd) @ w + b)))
            # the best tune sum; among ties the middle one of the thresholds that reach it
            sums = {t: sum(counted(pt, yt, kt, ct, t)[:2]) for t in np.linspace(0.05, 0.95, 91)}
            tied = [t for t, s in sums.items() if s == max(sums.values())]
            at = tied[len(tied) // 2]
            print(f"| {title} | {lam} | {' / '.join(map(str, counted(pt, yt, kt, ct, at)))} | {at:.2f} "
                  f"| {' / '.join(map(str, counted(ph, yh, kh, ch, at)))} |")


if __name__ == "__main__":
    main()
