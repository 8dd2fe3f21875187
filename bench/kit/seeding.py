"""The seed's side of the train suites (bench/suites/train.py on random weights, smol_train.py on smol):
its recipe (bench/baseline/notebook.py) on a fresh copy of a base, scored with bench/baseline/scoring.py,
for its steps or until every answer comes back (recall checked with the clock stopped).
Knows nothing about lorachat's training or sessions.
"""
import copy
import gc

from bench.baseline import notebook, scoring


def run(base, tokenizer, examples, recipe, device: str, recall: bool = False) -> dict:
    """The recipe on a copy of `base`: {seconds, loss (answer loss after it), recall "k/n" with `recall`}."""
    trained = notebook.train(copy.deepcopy(base), tokenizer, examples, recipe, device)
    out = dict(seconds=round(trained.seconds, 3), loss=round(scoring.answer_loss(trained.model, tokenizer, examples), 4))
    if recall:
        out["recall"] = f"{scoring.recall(trained.model, tokenizer, examples)}/{len(examples)}"
    del trained
    free(device)
    return out


def until_recall(base, tokenizer, examples, recipe, device: str, every: int, give_up: float | None = None) -> dict:
    """The recipe on a copy of `base` for its `steps` (its lr decaying over those), recall checked every
    `every` steps with the clock stopped, stopping at the first n/n or at the first check past `give_up`
    seconds. {reached, steps (the step of n/n, else None), seconds (then; else at the last step, or where it
    was cut off), cut_off (True when give_up ended it), recall_checks [[step, k], ...]}."""
    n = len(examples)

    def stop(step, value, seconds) -> bool:
        return value == n or (give_up is not None and seconds > give_up)

    trained = notebook.train(copy.deepcopy(base), tokenizer, examples, recipe, device,
                             check=lambda model: scoring.recall(model, tokenizer, examples), every=every, stop=stop)
    checks, total = trained.checks, round(trained.seconds, 3)
    del trained
    free(device)
    last = checks[-1] if checks else None
    reached = last is not None and last[1] == n
    cut_off = not reached and last is not None and give_up is not None and last[2] > give_up
    ended_at_check = reached or cut_off or (last is not None and last[0] == recipe.steps)
    return dict(reached=reached, steps=last[0] if reached else None, seconds=last[2] if ended_at_check else total,
                cut_off=cut_off, recall_checks=[[step, value] for step, value, _ in checks])


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
