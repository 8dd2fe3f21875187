"""The notebook's recipe, as the well-known PEFT OPT notebook ran it: the baseline lorachat is measured against.

HF `Trainer`; every example rendered as one text (prompt and answer alike carry the loss), padded to
128 tokens (`padding="max_length"`); gradient checkpointing on (with `enable_input_require_grads`,
as the notebook's preparation did); `DataCollatorForLanguageModeling(mlm=False)`; fp16 autocast on a
GPU; LoRA via PEFT's `get_peft_model`; the notebook's batch: 4 sequences a forward pass, 4 passes
accumulated per optimizer step. Not the notebook's: its 100 warmup steps (both sides start from the
same lr and decay it linearly, so the loss after N steps compares). Knows nothing about lorachat's
training code.
"""
import tempfile
import time
from dataclasses import dataclass

from lorachat.prompts import render_prompt

MAX_LENGTH = 128
NOTEBOOK_BATCH, NOTEBOOK_GRAD_ACCUM = 4, 4   # per_device_train_batch_size, gradient_accumulation_steps


@dataclass
class Recipe:
    r: int
    alpha: float
    dropout: float
    targets: list
    lr: float
    steps: int
    batch: int
    grad_accum: int
    seed: int


def texts(tokenizer, examples) -> list[str]:
    """The notebook trained on prompt + answer as one string, with no EOS appended."""
    return [render_prompt(tokenizer, ex.instruction, ex.input) + " " + ex.output for ex in examples]


def train(model, tokenizer, examples, recipe: Recipe, device: str):
    """Train a LoRA adapter on `model` (wrapped in place) the notebook's way; (PeftModel, seconds)."""
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForLanguageModeling, PrinterCallback, Trainer, TrainingArguments

    start = time.perf_counter()
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    config = LoraConfig(r=recipe.r, lora_alpha=recipe.alpha, lora_dropout=recipe.dropout,
                        target_modules=list(recipe.targets), bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    rows = [tokenizer(t, padding="max_length", max_length=MAX_LENGTH, truncation=True) for t in texts(tokenizer, examples)]
    rows = [{"input_ids": r["input_ids"], "attention_mask": r["attention_mask"]} for r in rows]
    with tempfile.TemporaryDirectory(prefix="bench-seed-") as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=recipe.batch,
                                 gradient_accumulation_steps=recipe.grad_accum, max_steps=recipe.steps,
                                 learning_rate=recipe.lr, warmup_steps=0, fp16=device == "cuda",
                                 use_cpu=device == "cpu", seed=recipe.seed, save_strategy="no",
                                 logging_strategy="no", report_to="none", disable_tqdm=True,
                                 dataloader_pin_memory=False)
        trainer = Trainer(model=peft_model, args=args, train_dataset=rows,
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
        trainer.remove_callback(PrinterCallback)  # the final metrics dict would land on our stdout
        model.config.use_cache = False  # as the notebook: silence the warning under checkpointing
        trainer.train()
    seconds = time.perf_counter() - start
    model.config.use_cache = True
    peft_model.eval()
    return peft_model, seconds
