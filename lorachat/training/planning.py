"""What one training run will do, worked out before anything is created: the Plan.

`plan` resolves the config against the model (the lr, each `none`), encodes the examples that fit,
and counts the planned steps; `in_context` adds copies of the taught questions asked in the middle
of a conversation. trainer.run takes the Plan and never decides these again.
"""
import dataclasses
from dataclasses import dataclass

from lorachat.core.errors import LorachatError
from lorachat.scoring.batches import Encoded, encode
from lorachat.training.recipe import TrainConfig, max_tokens, no_examples, planned_steps, resolved


@dataclass(frozen=True)
class Plan:
    """What one run will do, worked out once before it starts (and shown by the caller's progress)."""
    config: TrainConfig   # as given, with each `none` resolved by the model (what is trained and recorded)
    encoded: Encoded      # the examples that fit max_len and the model's positions, encoded once
    steps: int            # the most optimizer steps it takes, on `world` ranks
    taught: int = -1      # encoded's first `taught` are the examples taught; after them, their copies
                          # asked in the middle of a conversation (in_context); -1: all are taught
    world: int = 1

    @property
    def examples(self) -> list:
        """The examples taught (what recall reports on and lorachat.json records)."""
        return self.encoded.examples[:self.taught] if self.taught >= 0 else self.encoded.examples


def plan(model, tokenizer, examples, config: TrainConfig, world: int = 1) -> Plan:
    """The Plan for training `model` on `examples` with `config` on `world` ranks; one line when no
    example fits."""
    config = resolved(model, config)
    encoded = encode(tokenizer, examples, max_tokens(model, config))
    if not encoded.items:
        raise LorachatError(no_examples(encoded, model))
    return Plan(config, encoded, planned_steps(len(encoded.items), config, world), world=world)


def in_context(model, tokenizer, plan: Plan, turns) -> Plan:
    """`plan` with each taught question also trained after `config.context` earlier turns of a
    conversation, drawn in turn from `turns` ((question, answer) pairs: the anchor questions with the
    base's own answers), so that it comes back verbatim in the middle of a conversation, not only as
    a first question (on smol, ten facts asked as the 3rd turn: 8/10 taught alone, 10/10 with these
    copies; bench/RESULTS.md). Recall waits for the copies too and reports on the taught examples."""
    count, turns = plan.config.context, list(turns)
    if not count or not turns:
        return plan
    taught, copies = plan.encoded.examples, []
    for number, example in enumerate(e for e in taught if e.text is None and not e.history):
        start = number * count
        history = tuple(turns[(start + k) % len(turns)] for k in range(count))
        copies.append(dataclasses.replace(example, history=history))
    extra = encode(tokenizer, copies, plan.encoded.limit)   # a copy too long for the model is left out
    encoded = dataclasses.replace(plan.encoded, examples=taught + extra.examples, items=plan.encoded.items + extra.items)
    return dataclasses.replace(plan, encoded=encoded, taught=len(taught),
                               steps=planned_steps(len(encoded.items), plan.config, plan.world))
