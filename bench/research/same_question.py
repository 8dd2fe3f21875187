"""Can the base itself tell a paraphrase from a look-alike (issue 35)? The base is asked, in its chat
template, whether a question asks for the same information as a taught one, and the log odds of
Yes over No are compared between the set's paraphrases (should be high) and look-alikes (low).

    python -m bench.research.same_question --sets tune

Per set and wording: the AUC of paraphrases against look-alikes (0.5: no better than chance), the
medians, and the look-alikes it scores highest. Decisions only: nothing is trained. Knows nothing
about the REPL.
"""
import argparse
import sys

WORDINGS = [
    "Do these two questions ask for the same information?\nQuestion 1: {a}\nQuestion 2: {b}\nAnswer Yes or No.",
    "Would the answer to \"{a}\" also answer \"{b}\"? Answer Yes or No.",
]


def log_odds(model, tokenizer, taught: str, asked: str, wording: str, yes: list, no: list) -> float:
    """log P(Yes) - log P(No) of the base's first answer token (each over its spellings)."""
    import torch

    ids = tokenizer.apply_chat_template([{"role": "user", "content": wording.format(a=taught, b=asked)}],
                                        add_generation_prompt=True, return_tensors="pt")
    ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
    return float(torch.logsumexp(logprobs[yes], 0) - torch.logsumexp(logprobs[no], 0))


def auc(positive, negative) -> float:
    return sum((p > n) + 0.5 * (p == n) for p in positive for n in negative) / (len(positive) * len(negative))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.research.same_question", description=__doc__.splitlines()[0])
    p.add_argument("--sets", default="tune", help="comma list of routing_sets' sets (tune, held)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    from bench.research import routing_sets
    from bench.suites.smol import smol_folder
    from lorachat.models.loader import load_model

    torch.set_num_threads(args.threads)
    loaded = load_model(str(smol_folder()), device="cpu", dtype="auto")
    model, tokenizer = loaded.model, loaded.tokenizer
    first = lambda words: [tokenizer.encode(w, add_special_tokens=False)[0] for w in words]  # noqa: E731
    yes, no = first(("Yes", " Yes", "yes")), first(("No", " No", "no"))
    for name in args.sets.split(","):
        facts = routing_sets.TUNE if name == "tune" else routing_sets.HELD
        for number, wording in enumerate(WORDINGS):
            pos = [log_odds(model, tokenizer, q, p, wording, yes, no) for q, _, _, paras, _ in facts for p in paras]
            neg = [(log_odds(model, tokenizer, q, look, wording, yes, no), look)
                   for q, _, _, _, looks in facts for look in looks]
            scores = sorted(n for n, _ in neg)
            print(f"{name} wording {number}: AUC {auc(pos, scores):.3f}, paraphrases' median {sorted(pos)[len(pos) // 2]:.2f}, "
                  f"look-alikes' {scores[len(scores) // 2]:.2f}")
            for score, look in sorted(neg, reverse=True)[:5]:
                print(f"   {score:6.2f}  {look}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
