"""The optimizer and schedule keys of :train (warmup, loraplus, rslora): each off by default,
each doing what it says when on (measured in bench/RESULTS.md "Closing the gap")."""
import dataclasses
import math

import pytest

from lorachat.core.prompts import DEFAULT_INSTRUCTION, Example
from lorachat.training import lora, planning, recipe, trainer

PAIRS = [("Who wrote Hamlet?", "William Shakespeare wrote Hamlet around 1600."),
         ("What is the capital of France?", "Paris is the capital of France.")]


def lrs(config, total: int, steps: int):
    import torch

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = recipe.make_schedule(optimizer, config, total)
    out = []
    for _ in range(steps):
        out.append(round(optimizer.param_groups[0]["lr"], 6))
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_rises_to_lr_then_holds_or_decays_over_the_steps_left():
    config = dataclasses.replace(recipe.DEFAULTS, lr=0.01, warmup=4)
    assert lrs(config, 8, 6) == [0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01]
    assert lrs(dataclasses.replace(config, schedule="linear"), 8, 8) == [0.0025, 0.005, 0.0075, 0.01, 0.01, 0.0075, 0.005, 0.0025]
    assert lrs(dataclasses.replace(config, warmup=0), 8, 3) == [0.01] * 3


def peft_model(session, **changes):
    from peft import get_peft_model

    config = dataclasses.replace(recipe.DEFAULTS, lr=0.002, **changes)
    return get_peft_model(session.model, lora.lora_config(session.model, config)), config


def test_default_optimizer_is_one_plain_adamw_group(make_session):
    model, config = peft_model(make_session())
    params = trainer.trainable(model)
    optimizer = recipe.make_optimizer(model, params, config)
    assert type(optimizer).__name__ == "AdamW" and len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["params"] == params and optimizer.param_groups[0]["lr"] == 0.002
    assert optimizer.param_groups[0]["weight_decay"] == 0.0


def test_loraplus_gives_the_b_matrices_lr_times_the_ratio(make_session):
    model, config = peft_model(make_session(), loraplus=16.0)
    optimizer = recipe.make_optimizer(model, trainer.trainable(model), config)
    names = {id(p): n for n, p in model.named_parameters()}
    by_lr = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            by_lr.setdefault(group["lr"], set()).add(names[id(p)].split(".")[-3] if "lora_" in names[id(p)] else "?")
    assert by_lr == {0.002: {"lora_A"}, 0.032: {"lora_B"}}
    examples = [Example(DEFAULT_INSTRUCTION, q, a) for q, a in PAIRS]
    tokenizer = make_session().tokenizer
    config = dataclasses.replace(config, steps=2, until="steps", anchors=0)
    result = trainer.run(model, tokenizer, planning.plan(model, tokenizer, examples, config))
    assert result.steps == 2 and math.isfinite(result.loss)


def test_rslora_scales_by_alpha_over_the_root_of_r(make_session):
    session = make_session()
    plain, _ = peft_model(session)
    layer = next(m for n, m in plain.named_modules() if n.endswith("fc1") and hasattr(m, "scaling"))
    assert layer.scaling["default"] == pytest.approx(32 / 16)
    rs, _ = peft_model(make_session(), rslora=True)
    layer = next(m for n, m in rs.named_modules() if n.endswith("fc1") and hasattr(m, "scaling"))
    assert layer.scaling["default"] == pytest.approx(32 / 4)


def test_checkpointing_trains_as_without_it_warns_nothing_and_is_undone_after(make_session):
    import warnings

    import torch

    examples = [Example(DEFAULT_INSTRUCTION, q, a) for q, a in PAIRS]
    ids = torch.tensor([[5, 6, 7]])
    runs = {}
    for on in (False, True):
        session = make_session()
        torch.manual_seed(0)   # the same LoRA A matrices on both sides
        model, config = peft_model(session, checkpointing=on, steps=2, until="steps", anchors=0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = trainer.run(model, session.tokenizer, planning.plan(model, session.tokenizer, examples, config))
        assert [str(w.message) for w in caught if "checkpointing" in str(w.message).lower()] == []
        assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        with torch.enable_grad():   # no hook left making the embeddings' output need a gradient
            assert not model.get_input_embeddings()(ids).requires_grad
        runs[on] = (result.loss, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-5)
    for name, weight in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], weight, rtol=1e-4, atol=1e-6)
