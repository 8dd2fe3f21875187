"""Divergence: a learning rate too high for the examples makes the training loss climb back up
after it fell, and training ends unlearned. The guard watches a smoothed loss, keeps the weights
and optimizer state of its best point, and when the loss has climbed well above that best it puts
them back and halves the lr (bench/RESULTS.md "The divergence guard" has the measurements behind the thresholds).

Knows nothing about batches or recall: it is given the trainable parameters, the optimizer, the
lr schedule and one loss per step.
"""
import copy

RISE = 1.5        # diverged: the smoothed loss is this many times its best ...
MARGIN = 0.25     # ... and at least this much above it (tiny losses wobble)
MAX_DROPS = 4     # after this many halvings the guard stops acting


class Guard:
    def __init__(self, params, optimizer, schedule, window: int):
        self.params, self.optimizer, self.schedule = params, optimizer, schedule
        self.decay = 1 - 1 / max(window, 1)
        self.smooth = None
        self.best = float("inf")
        self.best_step = 0
        self.saved = None
        self.drops = []   # (step, smoothed loss then, best, best's step, new lr)

    def after_step(self, step: int, loss: float) -> None:
        self.smooth = loss if self.smooth is None else self.decay * self.smooth + (1 - self.decay) * loss
        if self.smooth < self.best:
            self.best, self.best_step = self.smooth, step
            self.saved = ([p.detach().clone() for p in self.params], copy.deepcopy(self.optimizer.state_dict()))
        elif self.diverged() and len(self.drops) < MAX_DROPS:
            self._restore()
            self.schedule.base_lrs = [lr / 2 for lr in self.schedule.base_lrs]
            for group in self.optimizer.param_groups:
                group["lr"] /= 2
            self.drops.append((step, self.smooth, self.best, self.best_step, self.optimizer.param_groups[0]["lr"]))
            self.smooth = self.best

    def diverged(self) -> bool:
        return self.smooth is not None and self.smooth > max(RISE * self.best, self.best + MARGIN)

    def finish(self) -> bool:
        """At the end: when the run ended diverged, the best weights back. Whether it did."""
        if self.diverged() and self.saved is not None:
            self._restore()
            return True
        return False

    def _restore(self) -> None:
        import torch

        weights, state = self.saved
        with torch.no_grad():  # an in-place copy that bumps the version counter (not .data's): the
            for param, value in zip(self.params, weights):  # decoding merge (adapters/switching.py) sees the change
                param.copy_(value)
        self.optimizer.load_state_dict(copy.deepcopy(state))

    def describe(self) -> list[str]:
        return [f"the loss climbed to {smooth:.2f} by step {step} (best {best:.2f} at step {at}): "
                f"went back to step {at}'s weights and halved the lr to {lr:g}"
                for step, smooth, best, at, lr in self.drops]
