"""`:export`: the base with one adapter merged in, written as a standalone model folder (safetensors
and tokenizer) that plain transformers loads. The live model is not changed: merged tensors are new
ones. Knows nothing about terminals.
"""
from pathlib import Path

from lorachat.adapters import live
from lorachat.core.durable import write_atomically
from lorachat.core.errors import LorachatError
from lorachat.core.names import check_name


def export(session, name: str, directory: Path) -> tuple[list[str], Path]:
    """Write the base with adapter `name` merged in as a standalone model (safetensors +
    tokenizer). The live model is not changed: merged tensors are new ones."""
    check_name(name, "adapter")
    target = Path(directory).expanduser()
    if target.exists() and not target.is_dir():
        raise LorachatError(f"{target} is a file, not a folder: give a new or empty folder to export to")
    if target.exists() and any(target.iterdir()):
        raise LorachatError(f"{target} already exists and is not an empty folder")
    notes = live.load_all(session, [name])
    scale = live.scale_of(session, name)
    if scale != 1.0:
        notes.append(f"'{name}' is merged in at its live scale {scale:g}, not as trained (:scale {name} 1 first for that)")
    def fill(work: Path) -> Path:
        with live.switch(session).unmerged():
            state = merged_state_dict(session, name)
            session.loaded.model.save_pretrained(str(work), state_dict=state, safe_serialization=True)
        session.tokenizer.save_pretrained(str(work))
        return work

    # renamed over an empty target folder (POSIX allows it); the user's folder is never swept
    write_atomically(target, fill, f"the export of '{name}' to {target}", sweep=False)
    return notes, target


def merged_state_dict(session, name: str) -> dict:
    """The base's own tensor names and tensors, with `name`'s delta added where it has one."""
    from peft.tuners.lora import LoraLayer

    base = session.loaded.model
    state, overrides = {}, {}
    for key, tensor in base.state_dict().items():
        if f".modules_to_save.{name}." in key:
            overrides[key.replace(f".modules_to_save.{name}.", ".")] = tensor
        elif ".lora_" not in key and ".modules_to_save." not in key:
            state[key.replace(".base_layer.", ".").replace(".original_module.", ".")] = tensor
    state.update(overrides)
    for qualified, layer in base.named_modules():
        if isinstance(layer, LoraLayer) and name in layer.lora_A:
            if name in getattr(layer, "lora_variant", {}):
                raise LorachatError(f"adapter '{name}' is not plain LoRA (DoRA or another variant): export merges plain LoRA only")
            weight = layer.get_base_layer().weight
            state[f"{qualified}.weight"] = (weight.float() + layer.get_delta_weight(name).float()).to(weight.dtype)
            if getattr(layer, "lora_bias", {}).get(name, False):   # PEFT's lora_bias: B's bias, scaled as B is
                bias = layer.get_base_layer().bias
                if bias is None:
                    raise LorachatError(f"adapter '{name}' has a LoRA bias on {qualified}, where the base has no bias "
                                        "to merge it into")
                state[f"{qualified}.bias"] = (bias.float() + layer.lora_B[name].bias.float() * layer.scaling[name]).to(bias.dtype)
    return state
