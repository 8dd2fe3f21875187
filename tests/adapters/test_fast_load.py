"""Loading a saved adapter: lorachat's fast path (lorachat/fast_load.py) leaves a PeftModel exactly as
PEFT's own `load_adapter` does — every parameter, flag, config and the random state — and declines
what it does not reproduce."""
import dataclasses
import json

import pytest
import torch

from lorachat.adapters import disk, fast_load, live, paths
from lorachat.training import lora, recipe

IDS = torch.tensor([[2, 50, 60, 70, 80, 90]])


def logits(model, name: str):
    model.set_adapter(name)
    with torch.no_grad():
        return model(input_ids=IDS).logits


def saved(session, name: str, config, seed: int):
    """A saved adapter with random non-zero weights (a fresh PEFT adapter has lora_B = 0)."""
    live.add_new(session, name, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, param in live.peft_model(session).named_parameters():
            if f".{name}." in param_name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    disk.save(session, name, {"test": True})
    live.remove(session, name)
    return paths.adapter_path(session, name)


def lorachat_config(session, **changes):
    """The LoraConfig `:train` builds (lorachat's defaults: r=16, fc1, no dropout)."""
    return lora.lora_config(session.model, dataclasses.replace(recipe.DEFAULTS, **changes))


def plain_config(**kw):
    from peft import LoraConfig

    return LoraConfig(**dict(dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), **kw))


def wrapped(session, dtype, paths):
    """A fresh copy of the base wrapped by plain PEFT: `first` trainable and active, `second` loaded."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(session.loaded.path).to(dtype)
    model = PeftModel.from_pretrained(base, paths["first"], adapter_name="first", is_trainable=True)
    model.load_adapter(str(paths["second"]), adapter_name="second")
    model.set_adapter("first")  # as a switch leaves it: the tuner's active adapter a name, not a list
    return model.eval()


def snapshot(model) -> dict:
    """Everything a load could change, by name."""
    from peft.tuners.lora import LoraLayer

    out = {"rng": torch.get_rng_state(), "peft_config": {n: c.to_dict() for n, c in model.peft_config.items()},
           "active": model.active_adapter, "tuner active": model.base_model.active_adapter,
           "targeted": list(model.base_model.targeted_module_names), "order": [n for n, _ in model.named_parameters()]}
    for name, param in model.named_parameters():
        out[f"param {name}"] = (param.detach().clone(), param.requires_grad, param.dtype, param.device, type(param))
    for name, buffer in model.named_buffers():
        out[f"buffer {name}"] = buffer.clone()
    for name, module in model.named_modules():
        out[f"module {name}"] = (type(module), module.training, getattr(module, "p", None))
        if isinstance(module, LoraLayer):
            for attr in module.other_param_names + ("lora_variant", "merged_adapters", "_active_adapter", "_disable_adapters"):
                value = getattr(module, attr)
                out[f"{attr} {name}"] = list(value) if isinstance(value, torch.nn.Module) else value
    return out


def differences(a: dict, b: dict) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if k not in a or k not in b or not same(a[k], b[k]))


def same(x, y) -> bool:
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(same(i, j) for i, j in zip(x, y))
    if isinstance(x, dict) and isinstance(y, dict):
        return list(x) == list(y) and all(same(x[k], y[k]) for k in x)
    return type(x) is type(y) and x == y


CASES = {
    "lorachat's :train defaults": lambda s: lorachat_config(s),
    "rank, rslora, patterns": lambda s: plain_config(r=8, lora_alpha=4, use_rslora=True, lora_dropout=0.0, init_lora_weights="gaussian",
                                                     target_modules=["q_proj", "k_proj", "v_proj"],
                                                     rank_pattern={"k_proj": 2}, alpha_pattern={"v_proj": 3}),
    "some layers only": lambda s: plain_config(r=2, target_modules=["v_proj"], layers_to_transform=[1]),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_load_leaves_the_model_exactly_as_peft_load_adapter(make_session, case, dtype):
    session = make_session()
    paths = {"first": saved(session, "first", lorachat_config(session), 1),
             "second": saved(session, "second", plain_config(r=2, target_modules=["q_proj", "k_proj", "v_proj"]), 2),
             "new": saved(session, "new", CASES[case](session), 3)}
    fast, peft = wrapped(session, dtype, paths), wrapped(session, dtype, paths)
    assert not differences(snapshot(fast), snapshot(peft))
    torch.manual_seed(11)
    assert fast_load.load_adapter(fast, "new", paths["new"]) is True  # the fast path took it
    fast_state = snapshot(fast)
    torch.manual_seed(11)
    peft.load_adapter(str(paths["new"]), adapter_name="new", is_trainable=False)
    peft_state = snapshot(peft)
    assert differences(fast_state, peft_state) == []
    new_a = [key for key in fast_state if key.startswith("param ") and ".lora_A.new." in key]
    first_a = [key for key in fast_state if key.startswith("param ") and ".lora_A.first." in key]
    assert new_a and first_a
    assert all(fast_state[key][1] is False for key in new_a) and all(fast_state[key][1] is True for key in first_a)
    for name in ("new", "first", "second"):
        assert torch.equal(logits(fast, name), logits(peft, name))
    # the comparison can fail: a wrong scaling on one layer is seen, in the state and in the logits
    module = new_a[-1][len("param "):].split(".lora_A.")[0]
    fast.get_submodule(module).scaling["new"] *= 1.5
    assert differences(snapshot(fast), snapshot(peft)) == [f"scaling {module}"]
    assert not torch.equal(logits(fast, "new"), logits(peft, "new"))


def test_fast_path_declines_what_it_does_not_reproduce(make_session):
    from safetensors.torch import load_file, save_file

    session = make_session()
    paths = {"first": saved(session, "first", lorachat_config(session), 1),
             "second": saved(session, "second", plain_config(), 2),
             "fc1": saved(session, "fc1", plain_config(target_modules=["k_proj", "fc1"]), 3),  # fc1 is not wrapped
             "dora": saved(session, "dora", plain_config(use_dora=True), 4),
             "regex": saved(session, "regex", plain_config(target_modules=r".*\.(q|v)_proj"), 5),
             "decoder": saved(session, "decoder", plain_config(), 6)}  # a module path's part: PEFT's freezing differs
    extra = saved(session, "extra", plain_config(), 7) / "adapter_model.safetensors"  # a key PEFT skips
    weights = load_file(extra)
    key = next(k for k in weights if k.endswith("q_proj.lora_B.weight"))
    weights[key.replace(".weight", ".bias")] = torch.ones(weights[key].shape[0])
    save_file(weights, extra)
    paths["extra"] = extra.parent
    for name in ("fc1", "dora", "regex", "decoder", "extra"):
        fast, peft = wrapped(session, torch.float32, paths), wrapped(session, torch.float32, paths)
        before = snapshot(fast)
        assert fast_load.fast_load(fast, name, paths[name]) is False, name
        if name != "extra":  # declined before touching anything
            assert differences(snapshot(fast), before) == [], name
        assert fast_load.load_adapter(fast, name, paths[name]) is False, name
        peft.load_adapter(str(paths[name]), adapter_name=name, is_trainable=False)
        assert torch.equal(logits(fast, name), logits(peft, name)), name
        assert torch.equal(logits(fast, "first"), logits(peft, "first")), name


def test_a_failed_fast_load_leaves_the_session_as_it_was(make_session, transcript):
    session = make_session()
    saved(session, "a", plain_config(), 1)
    path = saved(session, "wrongrank", plain_config(), 2)
    config = path / "adapter_config.json"
    config.write_text(json.dumps(dict(json.loads(config.read_text()), r=8)))  # the tensors are r=4
    transcript(session, [":use a"])
    before = snapshot(session.model)
    code, out = transcript(session, [":use wrongrank"])
    assert code == 1 and out.count("error: ") == 1 and "size mismatch" in out and "Traceback" not in out
    assert differences(snapshot(session.model), before) == ["rng"]  # PEFT's init of the new layers draws
    assert live.loaded_names(session) == ["a"] and session.active_adapter == "a"
