"""Loads a saved adapter directory into a PeftModel that already holds LoRA adapters, with the
result of PEFT's own `load_adapter(path, name, is_trainable=False)`, in time that does not grow with
the model's size or with the number of adapters already loaded.

PEFT's `load_adapter` walks every module of the model several times (matching targets, freezing,
`set_adapter`, dtype casts, the state-dict key remap, `eval()`), and each walk also visits every
loaded adapter's modules. When the new adapter only adds to LoRA layers the model already has (the
usual case: a session's adapters target the same projections, ranks may differ) and uses only plain
LoRA features, the fast path here does PEFT's per-layer step (`LoraModel._create_and_replace`, i.e.
the layer's own `update_layer`) on exactly those layers, in PEFT's order, then copies the file's
tensors in as `load_state_dict` would. Anything else (DoRA, biases, modules_to_save, regex or
"all-linear" targets, a target that is not wrapped yet, a pickle) goes through PEFT's
`load_adapter`. `fast_load` returns False when it does not apply, having left the model untouched
(or, for a file whose keys turn out not to be the new adapter's parameters, having undone its work);
any other error propagates and the caller undoes the load. The first adapter, which wraps the
base, is always PEFT's own load (`wrap`).

Knows nothing about sessions, provenance checks or the REPL; tied to the installed PEFT's layer
internals like switching.py (what it relies on is checked in `_plain_config` / `_plan`, and compared
with PEFT's own load in tests/adapters/test_fast_load.py).
"""
import contextlib
import dataclasses
from pathlib import Path

from lorachat.adapters.provenance import PEFT_PREFIX, SAFETENSORS

# LoraConfig fields the fast path reproduces (through PEFT's own per-layer code); every other field
# must have its default value.
HANDLED_FIELDS = {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
                  "inference_mode", "r", "lora_alpha", "target_modules", "lora_dropout", "use_rslora",
                  "init_lora_weights", "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern"}


def load_adapter(model, name: str, path: Path) -> bool:
    """Load adapter `name` from `path` into PeftModel `model` (frozen, inactive); True when the fast path did it."""
    if fast_load(model, name, path):
        return True
    model.load_adapter(str(path), adapter_name=name, is_trainable=False)
    return False


def wrap(base, name: str, path: Path):
    """A new PeftModel around `base` holding adapter `name` from `path` (frozen, eval mode). On failure
    `base` is left as it was, with no LoRA layer in it, and the error propagates."""
    from peft import PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(str(path))
    config.inference_mode = True
    model = None
    try:
        model = PeftModel(base, config, adapter_name=name)
        model.load_adapter(str(path), adapter_name=name, is_trainable=False)
    except BaseException:
        (model.unload() if model is not None else strip_lora(base)).eval()
        raise
    return model.eval()


def strip_lora(base):
    """Replace any LoRA layer left in `base` by its own base layer (a wrap that failed midway)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for qualified, module in list(base.named_modules()):
        if isinstance(module, BaseTunerLayer) and qualified:
            parent_name, _, child = qualified.rpartition(".")
            setattr(base.get_submodule(parent_name) if parent_name else base, child, module.get_base_layer())
    return base


def read_config(path: Path):
    """The adapter's config exactly as PEFT's `load_adapter` builds it."""
    from peft import PeftConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    config_class = PEFT_TYPE_TO_CONFIG_MAPPING[PeftConfig._get_peft_type(str(path))]
    config = config_class.from_pretrained(str(path), ephemeral_gpu_offload=False)
    config.inference_mode = True
    return config


def fast_load(model, name: str, path: Path) -> bool:
    """The fast path; False (the model untouched) when it does not apply."""
    if not (path / SAFETENSORS).is_file() or not _plain_model(model, name):
        return False
    config = read_config(path)
    if not _plain_config(config):
        return False
    from safetensors.torch import load_file

    weights = load_file(str(path / SAFETENSORS))
    targets = _plan(model, name, config, weights)
    if targets is None:
        return False
    _add(model, name, config, targets)
    try:
        _copy_weights(model, name, targets, weights)
    except _OtherKeys:  # e.g. a saved bias PEFT would skip: let PEFT decide, from the untouched model
        model.delete_adapter(name)
        return False
    return True


class _OtherKeys(Exception):
    """The file's keys are not exactly the new adapter's parameters."""


def _plain_model(model, name: str) -> bool:
    from peft import PeftModel
    from peft.tuners.lora import LoraModel

    return (isinstance(model, PeftModel) and type(model.base_model) is LoraModel and name not in model.peft_config
            and getattr(model, "hf_device_map", None) is None and _converts_nothing(model.base_model.model))


def _converts_nothing(base) -> bool:
    """Transformers v5 renamed some architectures' weights (MoE); PEFT converts those adapters on load."""
    try:
        from peft.utils.transformers_weight_conversion import (
            get_checkpoint_conversion_mapping,
        )
    except ImportError:
        return True  # transformers < 5: PEFT converts nothing
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    return model_type is None or get_checkpoint_conversion_mapping(model_type) is None


def _plain_config(config) -> bool:
    from peft import LoraConfig, PeftType
    from peft.utils.constants import MIN_TARGET_MODULES_FOR_OPTIMIZATION

    if type(config) is not LoraConfig or config.peft_type != PeftType.LORA:
        return False
    targets = config.target_modules
    if not isinstance(targets, (set, list)) or not targets or len(targets) >= MIN_TARGET_MODULES_FOR_OPTIMIZATION:
        return False  # a regex, "all-linear" or a long list: PEFT rewrites or expands it first
    if not (isinstance(config.init_lora_weights, bool) or config.init_lora_weights == "gaussian"):
        return False  # the other inits derive the adapter from the base weights, or are variants
    default = LoraConfig()
    return all(getattr(config, f.name) == getattr(default, f.name)
               for f in dataclasses.fields(config) if f.name not in HANDLED_FIELDS)


def _walk(root):
    """(key, module) in `named_modules` order, not descending into PEFT layers (PEFT skips their insides)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    stack = [("", root)]
    while stack:
        key, module = stack.pop()
        yield key, module
        if not isinstance(module, BaseTunerLayer):
            children = [(f"{key}.{child}" if key else child, sub) for child, sub in module._modules.items() if sub is not None]
            stack.extend(reversed(children))


def _plan(model, name: str, config, weights: dict):
    """[(key, layer)] the config targets, in PEFT's order, when all are plain LoRA Linear layers already
    and the file holds LoRA weights for exactly those; None otherwise."""
    from peft.tuners.lora import Linear
    from peft.utils.other import AuxiliaryTrainingWrapper

    lora_model = model.base_model
    targets, words = [], set()
    for key, module in _walk(lora_model.model):
        words.update(key.split("."))
        words.update(module._parameters)
        if isinstance(module, AuxiliaryTrainingWrapper):
            return None
        if key and lora_model._check_target_module_exists(config, key):
            if type(module) is not Linear:
                return None  # not wrapped yet (or not a plain Linear): PEFT builds the layer
            targets.append((key, module))
    if not targets:
        return None
    # PEFT keeps the trainability of existing parameters unless their name contains the adapter's name
    words.update(part for n, _ in targets[0][1].named_parameters() for part in n.split("."))
    if name in words:
        return None
    prefix = lora_model.prefix  # "lora_": PEFT's own split of a checkpoint key into module and weight
    in_file = {key.rsplit("." + prefix, 1)[0] for key in weights}
    return targets if in_file == {PEFT_PREFIX + key for key, _ in targets} else None


def _add(model, name: str, config, targets) -> None:
    """What `add_adapter` does for these layers: PEFT's checks, its per-layer step, its bookkeeping."""
    from peft.tuners.tuners_utils import _extend_unique, cast_adapter_dtype

    lora_model = model.base_model
    model._check_new_adapter_config(config, is_trainable=False)
    model.peft_config[name] = config
    lora_model._check_new_adapter_config(config)
    for key, layer in targets:
        parent_key, _, target_name = key.rpartition(".")
        lora_model._check_target_module_compatiblity(config, lora_model.model, target_name)
        with _alone(layer):
            lora_model._create_and_replace(config, name, layer, target_name,
                                           lora_model.model.get_submodule(parent_key), current_key=key)
            cast_adapter_dtype(layer, adapter_name=name)
    _extend_unique(lora_model.targeted_module_names, [key for key, _ in targets])
    lora_model.active_adapter = lora_model.active_adapters  # PEFT's set_adapter leaves the list form


@contextlib.contextmanager
def _alone(layer):
    """The layer's adapter containers swapped for empty ones while PEFT adds the new adapter, then
    merged back (the new entries last, as PEFT appends them).

    update_layer ends with the layer's set_adapter, which re-freezes every adapter of the layer (PEFT's
    inject_adapter then restores their requires_grad), and its device move and the dtype cast scan
    every adapter's parameters: with the others out of sight each layer costs the same at 1 or 50
    loaded adapters, and they are left exactly as they were."""
    import torch

    hidden = {}
    for attr in layer.adapter_layer_names + layer.other_param_names:
        container = getattr(layer, attr, None)
        if type(container) in (torch.nn.ModuleDict, torch.nn.ParameterDict) and len(container):
            hidden[attr] = container  # (an empty one costs nothing to scan: left in place)
            setattr(layer, attr, type(container)())
    try:
        yield
    finally:
        for attr, container in hidden.items():
            for key, value in getattr(layer, attr).items():
                container[key] = value
            setattr(layer, attr, container)


def _copy_weights(model, name: str, targets, weights: dict) -> None:
    """`load_state_dict` semantics (shapes must match, values copied into the existing parameters),
    keyed by PEFT's own mapping from the model's names to the checkpoint's; then eval mode, as PEFT
    leaves a loaded adapter (PEFT calls model.eval(); lorachat's model is in eval mode already)."""
    import torch

    params = _new_parameters(model, name, targets)
    if set(params) != set(weights):
        raise _OtherKeys()
    with torch.no_grad():
        for checkpoint_key, param in params.items():
            value = weights[checkpoint_key]
            if value.shape != param.shape:
                raise RuntimeError(f"size mismatch for {checkpoint_key}: copying a param with shape {value.shape} "
                                   f"from checkpoint, the shape in current model is {param.shape}.")
            param.copy_(value)
    for _, layer in targets:
        for container in _containers(layer, name):
            if isinstance(container, torch.nn.ModuleDict):
                container[name].eval()
    if model.training:
        model.eval()


def _new_parameters(model, name: str, targets) -> dict:
    """{checkpoint key: tensor} for adapter `name` in the target layers (what PEFT's
    _remap_adapter_state_dict_for_load maps, for these layers only)."""
    import torch

    lora_model, found = model.base_model, {}
    for key, layer in targets:
        for attr, container in _containers(layer, name, named=True):
            if isinstance(container, torch.nn.ModuleDict):
                state = {f"{attr}.{name}.{leaf}": t for leaf, t in container[name].state_dict(keep_vars=True).items()}
            else:
                state = {f"{attr}.{name}": container[name]}
            for leaf, tensor in state.items():
                found[lora_model._remove_adapter_name_from_key(f"{PEFT_PREFIX}{key}.{leaf}", name)] = tensor
    return found


def _containers(layer, name: str, named: bool = False):
    """The layer's per-adapter containers (ModuleDict / ParameterDict children) that hold adapter `name`."""
    import torch

    for attr, child in layer.named_children():
        if attr != "base_layer" and isinstance(child, (torch.nn.ModuleDict, torch.nn.ParameterDict)) and name in child:
            yield (attr, child) if named else child
