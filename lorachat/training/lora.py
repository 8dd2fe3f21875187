"""The adapter's shape: which modules a LoRA adapter targets and the PEFT LoraConfig for `:train`
keys, and its seeded creation. Knows nothing about the training loop, files or sessions.
"""
from lorachat.core.errors import LorachatError

# The MLP's up-projection: it learns the ten test pairs faster than q,k,v and, with anchor
# rehearsal, keeps more of the base's other answers (bench/RESULTS.md "Locality"). Its name in other
# architectures, when a model has no fc1 (OPT's name); else PEFT's own choice for the architecture.
DEFAULT_TARGETS = "fc1"
UP_PROJECTIONS = ("up_proj", "c_fc", "dense_h_to_4h", "w1")   # Llama/Mistral/Qwen, GPT-2, GPT-NeoX/Falcon, others
# The adapter's size: r=16 at alpha 32 by default; travel=on takes r=4 at scale 2 (alpha 2r): on smol's
# ten facts in bf16, ungated, a smaller rank keeps more of the other answers exact (tune set, rehearsal
# as travel=on's at weight 1: r=16 23%, r=8 28%, r=4 33%, r=2 38% of 303 probes) in more steps (30, 40,
# 50, 70); r=2 lost answers' length on the held-out set (bench/RESULTS.md, "What leaves lorachat")
RANK, ALPHA, TRAVEL_RANK = 16, 32.0, 4


def rank_and_alpha(config) -> tuple[int, float]:
    """(r, alpha) of `:train` keys, a `none` as it means: RANK and ALPHA, or with travel=on
    TRAVEL_RANK and 2r."""
    travel = getattr(config, "travel", False)
    r = config.r if config.r is not None else TRAVEL_RANK if travel else RANK
    return r, config.alpha if config.alpha is not None else 2.0 * r if travel else ALPHA


def check_targets_text(text: str) -> list[str] | str:
    """`all-linear`, or a comma list of module names; one line when it is neither."""
    if text == "all-linear":
        return text
    names = [n.strip() for n in text.split(",")]
    if not all(names) or not all(n.replace("_", "").replace(".", "").isalnum() for n in names):
        raise LorachatError(f"targets={text[:60]!r}: give a comma list of module names (q_proj,v_proj) or all-linear")
    return names


def linear_names(model) -> list[str]:
    """Distinct last names of the model's linear layers (through any LoRA wrapping)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    names = set()
    for qualified, module in model.named_modules():
        parts = qualified.split(".")
        if any(p.startswith("lora_") for p in parts) or not isinstance(module, (torch.nn.Linear, Conv1D)):
            continue
        parts = parts[:-1] if parts[-1] == "base_layer" else parts
        names.add(parts[-1])
    return sorted(names)


def lora_config(model, config):
    """PEFT's LoraConfig for `config` on `model`. Default targets the model lacks: PEFT's own
    choice for its architecture; named targets it lacks: one line listing its linear layers."""
    from peft import LoraConfig
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as KNOWN,
    )

    targets = check_targets_text(config.targets)
    model_type = getattr(model.config, "model_type", "")
    if targets != "all-linear":
        have = linear_names(model)
        missing = [t for t in targets if t.rsplit(".", 1)[-1] not in have]
        if missing and config.targets == DEFAULT_TARGETS:
            targets = _up_projection(have)
            if targets is None and model_type not in KNOWN:
                raise LorachatError(f"targets: this model has no fc1 (nor another MLP up-projection) and PEFT has no "
                                    f"default for '{model_type}': name them (it has: {', '.join(n for n in have if n != 'lm_head')})")
        elif missing:
            raise LorachatError(f"targets: this model has no linear layers named {', '.join(missing)} "
                                f"(it has: {', '.join(n for n in have if n != 'lm_head')}; or use targets=all-linear)")
    r, alpha = rank_and_alpha(config)
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=config.dropout, target_modules=targets,
                      use_rslora=config.rslora, bias="none", task_type="CAUSAL_LM",
                      fan_in_fan_out=_stored_transposed(model, targets if targets is not None else KNOWN.get(model_type)))


def _stored_transposed(model, targets) -> bool:
    """PEFT's fan_in_fan_out: whether the targeted layers are transformers' Conv1D (GPT-2's, which
    store their weight as (in, out)). PEFT corrects a wrong value layer by layer, with a warning, and
    writes the correction into the config of the adapter that created the layer only."""
    import torch
    from transformers.pytorch_utils import Conv1D

    kinds = set()
    for qualified, module in model.named_modules():
        if ".lora_" in qualified or not isinstance(module, (torch.nn.Linear, Conv1D)):
            continue
        key = qualified.removesuffix(".base_layer")
        if targets == "all-linear":
            chosen = not key.endswith("lm_head")
        else:
            chosen = any(key == t or key.endswith("." + t) for t in targets or ())
        if chosen:
            kinds.add(isinstance(module, Conv1D))
    return kinds == {True}


def _up_projection(have: list[str]):
    """The default target under the name this architecture gives the MLP's up-projection; None:
    PEFT picks (the attention projections of this architecture)."""
    name = next((n for n in UP_PROJECTIONS if n in have), None)
    return [name] if name else None


def seeded_add(seed: int, add):
    """Run `add()` (which creates the adapter and so draws its random init) under `seed`,
    leaving the global random state as it was."""
    import torch

    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        torch.manual_seed(seed)
        return add()


def wrapped(model, config):
    """`model` wrapped by PEFT with one fresh adapter as `:train` makes it from `config` (seeded
    init): for code that trains with train.run directly (the benchmark, tests)."""
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():   # PEFT 0.21 asks transformers 5.24 by the deprecated name (as in adapters/live.py)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing. is deprecated")
        return seeded_add(config.seed, lambda: get_peft_model(model, lora_config(model, config)))
