"""The LoRA training loop: examples -> answer-only loss -> optimizer steps until every answer is known.

One loop for one process (the REPL's `:train`) and for N (`lorachat train` under `accelerate
launch` or `torchrun`): accelerate prepares the model, optimizer and batches (ranks.Ranks),
`batch` is per rank, and every rank makes the same decisions from numbers summed across ranks.
A plain torch loop otherwise (measured against HF Trainer: see bench/RESULTS.md): dynamic padding
per batch, loss on answer tokens only (divided by the answer tokens of the whole step, on every
rank), recall checked by teacher-forced forward passes (scoring/recall.py). What a run will do is
worked out once, by planning.plan (the lr, the examples that fit, the planned steps), before anything
is created, and the loop takes that Plan. Reports progress through `on_step` and never prints; knows
nothing about terminals, sessions or files: the caller creates the adapter (adapters/live.py
add_new), activates it, and saves or discards it afterwards.
"""
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field

from lorachat.core.errors import LorachatError
from lorachat.models.loader import positions
from lorachat.scoring import locality
from lorachat.scoring.batches import answer_logits, collate, evaluating, model_device, padding_id
from lorachat.scoring.recall import Asking, Recall
from lorachat.training import attention, null_space
from lorachat.training.guard import Guard
from lorachat.training.ranks import Ranks
from lorachat.training.planning import Plan
from lorachat.training.recipe import make_optimizer, make_schedule, out_of_memory
from lorachat.training.steps import KNOWN, Shuffled, answer_tokens, one_step, optimizer_steps

CHECK_EVERY = 10      # steps between checks when the training passes give no hint
CHECK_SHARE = 9.0     # ... and only after this many times the last check's cost in training
GUARD_WINDOW = 10     # steps the divergence guard smooths the loss over (at least two epochs)


@dataclass
class TrainResult:
    steps: int            # optimizer steps taken
    loss: float           # mean answer-token loss of the last step (nan before any)
    recall: int           # k: questions that come back verbatim when asked (recall.Recall)
    total: int            # n: questions trained on (raw-text examples are trained, not asked)
    seconds: float
    cancelled: bool = False
    tokens: int = 0       # non-pad tokens processed by training forward passes, all ranks
    epochs: float = 0.0
    skipped: int = 0      # examples longer than `limit` tokens, left out
    limit: int = 0
    known: int = 0        # examples (text included) known as trained: what until=recall waits for
    examples: int = 0     # examples trained on (text included)
    check_seconds: float = 0.0   # of `seconds`, spent on recall checks
    reasons: list = field(default_factory=list)  # why some questions cannot come back whole when asked
    max_answer_tokens: int | None = None         # the longest taught answer, EOS not counted
    notes: list = field(default_factory=list)    # what the divergence guard did
    lr: float = 0.0                              # the lr at the end (lower when the guard halved it)
    world: int = 1                               # processes that trained
    state: dict | None = None                    # under FSDP: the full state dict, for the main process to save


def trainable(model) -> list:
    """The parameters the optimizer moves (the active adapter's LoRA matrices), kept in fp32:
    fp16 LoRA weights fail with 'Attempting to unscale FP16 gradients'."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.dtype != torch.float32:
            p.data = p.data.float()
    return params


def run(model, tokenizer, plan: Plan, on_step=None, should_stop=None, asking=None, anchors=None,
        base=None) -> TrainResult:
    """Train the model's trainable (LoRA) parameters as `plan` says; the base stays frozen. Recall
    is reported as asking under `asking` would return it. With `config.anchors`, the base's own
    answers to built-in anchor questions are rehearsed (`anchors`: a locality.Reference of them;
    made here, before the first step, when not given; with `config.null_space` the adapter is held
    off their inputs, null_space.py). `on_step(step, total, loss, known, kept)`
    after each step. `base()`: a context in which the model answers as the base (anchor_loss=kl
    compares with it; default PEFT's `disable_adapter`, for a model no one else switches).

    Stops at the planned steps, when every answer is known (`until=recall`; and the anchors kept
    with `keep_base`), or at the next step boundary once `should_stop()` is true (on any rank) or
    Ctrl-C arrives (cancelled=True)."""
    import torch

    config, encoded = plan.config, plan.encoded
    params = trainable(model)
    if not params:
        raise LorachatError("the model has no trainable (adapter) parameters")
    asking = asking or Asking(context=positions(model) or 1 << 20)
    checker = Recall(tokenizer, encoded.examples, encoded.items, asking)
    if (config.anchors or config.keep_base or config.null_space) and anchors is None:  # the adapter is still zero: the base answers
        anchors = locality.anchor_reference(model, tokenizer, asking.instruction, config.anchor_pool,
                                            locality.LocalityOptions(max_new_tokens=config.anchor_tokens))
    device = model_device(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), attention.for_training(model):
        torch.manual_seed(config.seed)
        ranks = Ranks(model, cpu=device.type == "cpu")
        try:
            result = _Loop(model, tokenizer, plan, checker, params, on_step, should_stop, ranks, anchors, base).run()
        finally:   # whatever ended it: accelerate's autocast forward must not stay on the session's model
            ranks.finish()
    return dataclasses.replace(result, skipped=encoded.skipped, limit=encoded.limit)


class _Loop:
    """One training run's state: the optimizer, where it is, what the training passes showed."""

    def __init__(self, model, tokenizer, plan, checker, params, on_step, should_stop, ranks, anchors=None, base=None):
        import torch

        config = plan.config
        self.model, self.tokenizer, self.items, self.checker = model, tokenizer, plan.encoded.items, checker
        self.taught = len(plan.examples)   # what the result reports on (the copies in context are waited for)
        self.config, self.params, self.on_step, self.should_stop = config, params, on_step, should_stop
        self.ranks = ranks
        # constant lr by default: with until=recall the last step is not known; linear decay (as HF
        # Trainer) is schedule=linear. Clipping at 1.0 (HF's default) keeps a too-high lr from diverging.
        optimizer = make_optimizer(model, params, config)
        loader = torch.utils.data.DataLoader(range(len(self.items)), batch_size=config.batch, collate_fn=list,
                                             sampler=Shuffled(len(self.items), config.seed))
        self.wrapped, self.optimizer, self.loader = self.ranks.prepare(model, optimizer, loader)
        self.per_epoch = math.ceil(len(self.loader) / config.grad_accum)
        self.total = plan.steps
        self.schedule = make_schedule(self.optimizer, config, self.total)
        self.step, self.loss, self.tokens, self.cancelled = 0, float("nan"), 0, False
        self.seen = {}              # example index -> known in its latest training pass (a free hint)
        self.complete = False       # the last check found every example known
        self.checked_at = -1        # the step that check ran after
        self.check_seconds, self.last_check, self.since_check = 0.0, 0.0, 0.0
        # the parameters as the optimizer holds them after prepare (FSDP shards them: each rank its own share)
        held = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.guard = Guard(held, self.optimizer, self.schedule, window=max(2 * self.per_epoch, GUARD_WINDOW))
        self.anchors = anchors                                  # the base's answers (locality.Reference)
        self.anchor_items = locality.items_of(anchors) if anchors is not None and config.anchors else []
        self.anchor_draw, self.anchor_cycle = random.Random(config.seed + 1), []
        self.kept = None                                        # share of the anchors kept (keep_base)
        self.base = base                                        # a context answering as the base (anchor_loss=kl)
        self.projection = null_space.held(model, anchors, config, base, self.ranks.fsdp)   # null_space, or None

    def run(self) -> TrainResult:
        import torch

        start = time.perf_counter()
        if self.config.checkpointing:
            _checkpointing(self.model, True)
        self.model.train()
        try:
            while self.step < self.total and not self._done():
                for group in optimizer_steps(self.loader, self.config.grad_accum):
                    if self._done():
                        break
                    self._step(group)
                    if self.step >= self.total:
                        break
        except KeyboardInterrupt:
            self.cancelled = True
            if self.projection is not None:   # it may have come between a step and its projection (keep=partial saves it)
                self.projection.project()
        except torch.OutOfMemoryError:
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            raise LorachatError(out_of_memory(self.config)) from None
        finally:
            self.optimizer.zero_grad(set_to_none=True)
            if self.config.checkpointing:
                _checkpointing(self.model, False)
            self.model.eval()
        notes = self.guard.describe()
        if self.config.guard and not self.cancelled and self.guard.finish():
            self.complete = False
            notes.append(f"the run ended with the loss climbing: kept step {self.guard.best_step}'s weights")
        result = self._result(start)
        state = self.ranks.full_state_dict()
        return dataclasses.replace(result, notes=notes, lr=self.optimizer.param_groups[0]["lr"],
                                   world=self.ranks.world, state=state)

    def _done(self) -> bool:
        kept = self.config.keep_base is None or (self.kept or 0.0) >= self.config.keep_base
        return self.cancelled or self.complete and kept and self.config.until == "recall"

    def _step(self, group) -> None:
        began = time.perf_counter()
        group = [[(i, self.items[i]) for i in batch] for batch in group]
        extra = self._anchors() if self.anchor_items and self.step % self.config.anchor_every == 0 else []
        # before the step, summed across ranks: a stop asked on any rank, the step's answer tokens
        stop = 1.0 if self.should_stop is not None and self.should_stop() else 0.0
        asked, step_tokens, anchor_tokens = self.ranks.sum([stop, answer_tokens(group), answer_tokens([extra])])
        if asked:
            self.cancelled = True
            return
        riders = [item for _, item in extra]
        base = self._base_logprobs(riders) if riders and self.config.anchor_loss == "kl" else None
        loss, tokens, hints = one_step(self.wrapped, self.tokenizer, group, self.optimizer, self.ranks, self.config.clip,
                                    step_tokens, riders, anchor_tokens, self.config.anchor_weight, base)
        if self.projection is not None:
            self.projection.project()
        self.schedule.step()
        self.step += 1
        # after it: the loss, the hints and the step's seconds, the same on every rank
        summed = self.ranks.sum([loss, tokens, time.perf_counter() - began])
        if self.ranks.world > 1:   # every rank's hints, on every rank
            merged = self.ranks.max([hints.get(i, 0.0) for i in range(len(self.items))])
            hints = {i: h for i, h in enumerate(merged) if h}
        self.loss, self.tokens = summed[0] / step_tokens, self.tokens + int(summed[1])
        self.seen.update((i, h == KNOWN) for i, h in hints.items())
        if self.config.guard:
            self.guard.after_step(self.step, self.loss)
        self.since_check += summed[2] / self.ranks.world
        self._check()
        if self.on_step is not None:
            known = sum(1 for i, ok in self.seen.items() if ok and i < self.taught)   # of the taught examples
            self.on_step(self.step, self.total, self.loss, known, self.kept)

    def _anchors(self) -> list:
        """This rank's share of the next `config.anchors` anchors of a shuffled cycle over the pool
        (the same draw on every rank, so N ranks rehearse what one would)."""
        picked = []
        while len(picked) < self.config.anchors:
            if not self.anchor_cycle:
                self.anchor_cycle = list(range(len(self.anchor_items)))
                self.anchor_draw.shuffle(self.anchor_cycle)
            picked.append(self.anchor_cycle.pop())
        return [(j, self.anchor_items[j]) for j in self.ranks.shard(picked)]

    def _base_logprobs(self, riders):
        """The base's log-probabilities (adapter disabled, no gradient, eval mode: the base's own
        dropout off, as when it made the anchors' answers) at the riders' answer positions, in the
        order one_step meets them: what anchor_loss=kl pulls the adapter towards."""
        import torch

        model = self.ranks.checking_model()
        input_ids, labels, mask = collate(riders, padding_id(self.tokenizer), model_device(model))
        with torch.no_grad(), evaluating(model), (self.base or model.disable_adapter)(), self.ranks.autocast():
            logits, _, _ = answer_logits(model, input_ids, labels, mask)
        return torch.log_softmax(logits, -1)

    def _check(self) -> None:
        """Between steps, with until=recall: whether every example is known now. Run when the
        training passes themselves got every example right (their argmax is the hint, exact with
        dropout 0 but one update behind), and every CHECK_EVERY steps in case dropout hides it,
        then only while checks stay under a tenth of the training time. A failing check stops
        at its first unknown example, the likely ones checked first. Each rank checks its share.
        Whether a check is due is decided from times agreed across ranks (summed, or the slowest
        rank's), never one rank's own clock: ranks that disagreed would part ways in their
        collectives and wait for each other for ever."""
        if self.config.until != "recall" or self.step >= self.total or self.cancelled:
            return  # the last step's check is the final one, in _result
        hinted = len(self.seen) == len(self.items) and all(self.seen.values())
        due = self.step % CHECK_EVERY == 0 and self.since_check >= CHECK_SHARE * self.last_check
        waiting = self.complete and self.config.keep_base is not None   # recall done, the anchors not yet
        if not (due if waiting else hinted or due):
            return
        began = time.perf_counter()
        mine = self.ranks.shard(range(len(self.items)))
        unknown = [i for i in mine if not self.seen.get(i, False)]
        ok = self.checker.all_known(self.ranks.checking_model(), unknown, indices=mine)
        self.complete = self.ranks.max([0.0 if ok else 1.0])[0] == 0.0
        self.checked_at = self.step
        if self.complete and self.config.keep_base is not None:
            self.kept = locality.score(self.ranks.checking_model(), self.tokenizer, self.anchors).kept
        self.last_check = self.ranks.max([time.perf_counter() - began])[0]
        self.check_seconds += self.last_check
        self.since_check = 0.0

    def _result(self, start: float) -> TrainResult:
        """The final check, full and exact, each rank its share (skipped for a cancelled run
        that is discarded)."""
        began = time.perf_counter()
        if self.cancelled and self.config.keep != "partial":
            known_count, recalled = 0, 0
        else:
            mine = self.ranks.shard(range(self.taught))
            trained, recalled, other = self.checker.count(self.ranks.checking_model(), mine, self.seen,
                                                          trained_known=self.complete and self.checked_at == self.step)
            known_count, recalled = self.ranks.sum([sum(trained.values()), recalled])
            mine_other = set(other)
            other = self.ranks.max([1.0 if i in mine_other else 0.0 for i in range(self.taught)])
            self.checker.mark_other_instruction([i for i, flag in enumerate(other) if flag])
        self.check_seconds += time.perf_counter() - began
        questions = sum(1 for i in self.checker.questions if i < self.taught)
        return TrainResult(steps=self.step, loss=self.loss, recall=int(recalled), total=questions,
                           seconds=time.perf_counter() - start, cancelled=self.cancelled, tokens=self.tokens,
                           epochs=self.step / self.per_epoch, known=int(known_count), examples=self.taught,
                           check_seconds=self.check_seconds, reasons=self.checker.reasons(range(self.taught)),
                           max_answer_tokens=self.checker.longest_answer())


def _checkpointing(model, on: bool) -> None:
    """Activation checkpointing on or off for one run (transformers 5.24's names; 5.17 has only the
    gradient_* ones, which 5.24 deprecates); off also removes the hook on the embeddings' output it
    adds, which transformers leaves on a PeftModel."""
    new = hasattr(model, "activation_checkpointing_enable")
    if on:
        (model.activation_checkpointing_enable if new else model.gradient_checkpointing_enable)({"use_reentrant": False})
    else:
        (model.activation_checkpointing_disable if new else model.gradient_checkpointing_disable)()
        model.disable_input_require_grads()

