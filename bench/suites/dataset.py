"""dataset_*: a thousand rows of realistic lengths through `:train` and `:eval` on the tiny model.

The rows are generated here (bench cannot read ../shared): words of the tiny model's own corpus,
Alpaca-like fields (a third of the rows carry an input), lengths from a long-tailed distribution
like Alpaca's, so that about a third are longer than the tiny model's 512 positions. Measured:
training tokens/s with until=recall against until=steps over the same steps from the same
start (the recall checks' overhead, target <= 10%), the share of a run spent on checks, `:eval`
examples/s against a plain no-grad forward pass over the same length-sorted batches (target
within 1.25x), and how many rows were left out. Knows nothing about the other figures.
"""
import math
import random
import time

ROWS = 1000
SEED = 0


def rows(count: int = ROWS, seed: int = SEED):
    """Alpaca-like Examples with a long tail of lengths (median about 350 tokens in all)."""
    from importlib import resources

    from lorachat.core.prompts import Example

    words = resources.files("lorachat").joinpath("data/tiny_corpus.txt").read_text(encoding="utf-8").split()
    pick = random.Random(seed)

    def text(length):
        return " ".join(pick.choice(words) for _ in range(max(1, int(length)))).capitalize() + "."

    examples = []
    for _ in range(count):
        total = pick.lognormvariate(math.log(260), 0.8)   # words; the tiny tokenizer gives ~1.3 tokens a word
        instruction = text(pick.uniform(5, 20))
        question = text(pick.lognormvariate(math.log(25), 0.6)) if pick.random() < 0.35 else ""
        examples.append(Example(instruction, question, text(max(3, total - len(instruction.split())))))
    return examples


def figures(device: str, steps: int, count: int = ROWS) -> dict:

    from lorachat.models.loader import load_model
    from lorachat.scoring import batches
    from lorachat.training import lora, planning, recipe, trainer

    loaded = load_model("tiny", device)
    examples = rows(count)
    encoded = batches.encode(loaded.tokenizer, examples, recipe.max_tokens(loaded.model, recipe.DEFAULTS))
    out = dict(dataset_rows=len(examples), dataset_trained=len(encoded.items), dataset_skipped=encoded.skipped,
               dataset_limit=encoded.limit, dataset_steps=steps)
    config = recipe.resolved(loaded.model, recipe.DEFAULTS)
    model = lora.wrapped(loaded.model, config)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for until in ("steps", "recall"):
        with_torch_reset(model, start)
        run_config = _config(config, steps, until)
        plan = planning.Plan(run_config, encoded, recipe.planned_steps(len(encoded.items), run_config))
        result = trainer.run(model, loaded.tokenizer, plan)
        out[f"dataset_{until}_tokens_per_s"] = round(result.tokens / result.seconds, 1)
        out[f"dataset_{until}_s"] = round(result.seconds, 2)
        out[f"dataset_{until}_check_s"] = round(result.check_seconds, 2)
        out[f"dataset_{until}_recall"] = f"{result.recall}/{result.total}"
    out["dataset_check_overhead"] = round(out["dataset_steps_tokens_per_s"] / out["dataset_recall_tokens_per_s"] - 1, 4)
    out["dataset_check_share"] = round(out["dataset_recall_check_s"] / out["dataset_recall_s"], 4)
    out.update(_eval(model, loaded, encoded))
    return out


def _config(config, steps: int, until: str):
    import dataclasses

    return dataclasses.replace(config, steps=steps, until=until)


def with_torch_reset(model, start: dict) -> None:
    """The adapter back to its initial weights: both runs start from the same point."""
    for name, param in model.named_parameters():
        if name in start:
            param.data.copy_(start[name])


def _eval(model, loaded, encoded) -> dict:
    """`:eval`'s measuring pass (loss and recall as asked) against a bare forward over the same batches."""
    import torch

    from lorachat.scoring.batches import (
        collate,
        model_device,
        padding_id,
        sorted_batches,
    )
    from lorachat.scoring.recall import Asking, Recall

    checker = Recall(loaded.tokenizer, encoded.examples, encoded.items, Asking(context=encoded.limit))
    items = encoded.items
    began = time.perf_counter()
    checker.evaluate(model)
    measured = time.perf_counter() - began
    model.eval()
    began = time.perf_counter()
    with torch.no_grad():
        for group in sorted_batches(range(len(items)), lambda i: len(items[i][0])):
            input_ids, _, mask = collate([items[i] for i in group], padding_id(loaded.tokenizer), model_device(model))
            model(input_ids=input_ids, attention_mask=mask, use_cache=False)
    plain = time.perf_counter() - began
    return dict(dataset_eval_examples_per_s=round(len(items) / measured, 1),
                dataset_forward_examples_per_s=round(len(items) / plain, 1),
                dataset_eval_ratio=round(measured / plain, 3))
