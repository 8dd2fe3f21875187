"""The seed's recipe: Step 5 of the notebook this project grew from, the baseline lorachat is measured against.

Exactly as that notebook trains (fp16 only on a GPU): HF `Trainer` with `per_device_train_batch_size=1`,
`gradient_accumulation_steps=1`, `max_steps=100`, `learning_rate=1e-4` (its linear decay to 0, no
warm-up, every other TrainingArguments default); each pair rendered as
`Instruction: {instruction}\\nInput: {input}\\nAnswer: {output}` with no EOS, tokenized with
`padding="max_length"`, `max_length=128`, `truncation=True`; `pad_token = eos_token` and
`DataCollatorForLanguageModeling(mlm=False)` (labels = input_ids, pads masked); gradient
checkpointing; LoRA r=4, alpha 32, dropout 0.05 on q/k/v via PEFT's `get_peft_model`.
Optionally checks the model every N steps with the clock stopped. Knows nothing about lorachat.
"""
import copy
import tempfile
import time
import warnings
from dataclasses import dataclass, field

from transformers import TrainerCallback

TEMPLATE = "Instruction: {instruction}\nInput: {input}\nAnswer:"


@dataclass(frozen=True)
class Recipe:
    lr: float = 1e-4
    steps: int = 100
    batch: int = 1               # per_device_train_batch_size
    grad_accum: int = 1          # gradient_accumulation_steps
    max_length: int = 128        # padding="max_length", truncation=True
    r: int = 4
    alpha: float = 32
    dropout: float = 0.05
    targets: tuple = ("q_proj", "k_proj", "v_proj")
    seed: int = 42               # TrainingArguments' default (the notebook sets none); also seeds the LoRA init

    def summary(self) -> dict:
        return dict(batch=self.batch, grad_accum=self.grad_accum, lr=self.lr, steps=self.steps,
                    max_length=self.max_length, r=self.r, alpha=self.alpha, dropout=self.dropout,
                    targets=",".join(self.targets), gradient_checkpointing=True, eos=False)


SEED = Recipe()


@dataclass
class Run:
    model: object                # the trained PeftModel (eval mode)
    seconds: float               # wall time of setup + training, the checks' time taken out
    checks: list = field(default_factory=list)  # (step, value, seconds so far) per check


def prompt(example) -> str:
    """The training prompt: the template up to `Answer:`."""
    return TEMPLATE.format(instruction=example.instruction, input=example.input)


def text(example) -> str:
    return prompt(example) + " " + example.output


def seed_tokenizer(tokenizer):
    """The notebook's `tokenizer.pad_token = tokenizer.eos_token`, on a copy (the caller's stays as it was)."""
    mine = copy.deepcopy(tokenizer)
    mine.pad_token = mine.eos_token
    return mine


def trained_tokens(tokenizer, examples, recipe: Recipe) -> float:
    """The non-pad tokens the recipe's `steps` train on: rows of the mean pair's length (truncated), as sampled."""
    lengths = [min(len(tokenizer(text(e))["input_ids"]), recipe.max_length) for e in examples]
    return recipe.steps * recipe.batch * recipe.grad_accum * sum(lengths) / len(lengths)


def rows(tokenizer, examples, recipe: Recipe) -> list[dict]:
    encoded = [tokenizer(text(e), padding="max_length", max_length=recipe.max_length, truncation=True) for e in examples]
    return [{"input_ids": r["input_ids"], "attention_mask": r["attention_mask"]} for r in encoded]


def train(model, tokenizer, examples, recipe: Recipe, device: str, check=None, every: int = 0, stop=None) -> Run:
    """Train a LoRA adapter on `model` (wrapped in place) the seed's way. With `check` (model -> value),
    call it every `every` steps with the clock stopped; training stops there when `stop(step, value,
    seconds so far)` says so (default: a value of True)."""
    with warnings.catch_warnings():   # the notebook's calls, which transformers 5.24 renamed (FutureWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing.* is deprecated")
        return _train(model, tokenizer, examples, recipe, device, check, every, stop)


def _train(model, tokenizer, examples, recipe, device, check, every, stop) -> Run:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        DataCollatorForLanguageModeling,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    start = time.perf_counter()
    tokenizer = seed_tokenizer(tokenizer)
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    config = LoraConfig(r=recipe.r, lora_alpha=recipe.alpha, lora_dropout=recipe.dropout,
                        target_modules=list(recipe.targets), bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        peft_model = get_peft_model(model, config)
    run = Run(peft_model, 0.0)
    callbacks = [_Checks(check, every, run, start, stop)] if check is not None and every else []
    with tempfile.TemporaryDirectory(prefix="bench-seed-") as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=recipe.batch,
                                 gradient_accumulation_steps=recipe.grad_accum, max_steps=recipe.steps,
                                 learning_rate=recipe.lr, fp16=device == "cuda", use_cpu=device == "cpu",
                                 seed=recipe.seed, save_strategy="no", logging_strategy="no", report_to="none",
                                 disable_tqdm=True, dataloader_pin_memory=False)
        trainer = Trainer(model=peft_model, args=args, train_dataset=rows(tokenizer, examples, recipe),
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), callbacks=callbacks)
        trainer.remove_callback(PrinterCallback)  # the final metrics dict would land on our stdout
        model.config.use_cache = False  # as the notebook: silence the warning under checkpointing
        trainer.train()
    run.seconds = time.perf_counter() - start - sum(c.paused for c in callbacks)
    model.config.use_cache = True
    peft_model.eval()
    return run


class _Checks(TrainerCallback):
    """Every `every` steps: stop the clock, run `check` on the model in eval mode, record it, and end
    training when `stop` (step, value, seconds -> bool; None: value is True) says so."""

    def __init__(self, check, every: int, run: Run, start: float, stop=None):
        self.check, self.every, self.run, self.start, self.paused = check, every, run, start, 0.0
        self.stop = stop or (lambda step, value, seconds: value is True)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every:
            return
        stopped = time.perf_counter()
        model.eval()
        value = self.check(model)
        model.train()
        seconds = round(stopped - self.start - self.paused, 3)
        self.run.checks.append((state.global_step, value, seconds))
        if self.stop(state.global_step, value, seconds):
            control.should_training_stop = True
        self.paused += time.perf_counter() - stopped
