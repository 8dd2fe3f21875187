"""null_space=EPS (training/null_space.py): each lora_A held off the directions that carry the
anchors' inputs, on every architecture the tests build."""
import dataclasses

import pytest

from bench.kit.pairs import PAIRS
from lorachat.core.errors import LorachatError
from lorachat.scoring import locality
from lorachat.training import lora, null_space, planning, recipe, trainer
from tests.helpers import examples_of, model_dir


def _leading(cov, eps):
    """The eigenvectors of `cov` that carry all but the last `eps` of its energy."""
    import torch

    values, vectors = torch.linalg.eigh(cov)
    values = values.clamp(min=0)
    return vectors[:, values.cumsum(0) > eps * values.sum()].float()


def _share_on_leading(model, covs, eps) -> float:
    """The largest share of a lora_A's norm that lies in its layer's leading directions."""
    modules = dict(model.named_modules())
    worst = 0.0
    for name, cov in covs.items():
        a = modules[name].lora_A["default"].weight.detach().float()
        worst = max(worst, float((a @ _leading(cov, eps)).norm() / a.norm()))
    return worst


@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2"])
def test_null_space_keeps_each_lora_a_off_the_anchors_inputs_through_training(arch, tmp_path):
    """Trained with null_space=0.05, every lora_A of the default targets has (to float rounding) no
    part along the directions that carry 95% of its layer's inputs on the anchors, while the same
    run without it has a large one; and the adapter still learns (its B moves, the loss falls)."""
    import torch

    from lorachat.models.loader import load_model

    loaded = load_model(str(model_dir(tmp_path, arch)), device="cpu", dtype="float32")
    config = dataclasses.replace(recipe.DEFAULTS, steps=6, until="steps", anchors=0, probes=0, lr=5e-3)
    anchors = locality.anchor_reference(loaded.model, loaded.tokenizer, "Answer.", 8,
                                        locality.LocalityOptions(max_new_tokens=8))

    def trained(eps):
        asked = dataclasses.replace(config, null_space=eps)
        model = lora.wrapped(loaded.model, asked)
        losses = []
        trainer.run(model, loaded.tokenizer, planning.plan(model, loaded.tokenizer, examples_of(PAIRS[:2]), asked),
                    anchors=anchors, on_step=lambda step, total, loss, known, kept: losses.append(loss))
        covs = null_space.covariances(model, locality.items_of(anchors), model.disable_adapter)
        share = _share_on_leading(model, covs, 0.05)
        moved = max(float(m.lora_B["default"].weight.detach().abs().max()) for m in model.modules()
                    if isinstance(getattr(m, "lora_B", None), torch.nn.ModuleDict))
        model.unload()
        return share, moved, losses

    share, moved, losses = trained(0.05)
    assert share < 1e-3 and moved > 0 and losses[-1] < losses[0], (share, moved, losses)
    free_share, _, _ = trained(0.0)
    assert free_share > 0.5, free_share


def test_null_space_is_a_train_key_that_asks_for_the_anchors_and_measures_ungated(make_session, transcript, home):
    """`:train null_space=0.05` on the tiny model: the key parses, the run fetches the anchors it is
    measured on (64 tokens each) though it rehearses none, and the final lines give the ungated
    figures as for travel=on (an adapter meant to leave lorachat); a value out of range is one line."""
    import json

    session = make_session()
    transcript(session, [":add What is SOH? => A hardmask.", ":add What is SiON? => A nitride."])
    code, out = transcript(session, [":train other targets=lm_head steps=1 until=steps probes=0 anchors=0",  # loaded beside it
                                     ":train ns null_space=0.05 steps=2 until=steps probes=8 anchors=0"])
    assert code == 0 and "ungated, as :export, lorachat serve and a GGUF export serve it: kept" in out, out
    meta = json.loads((home / "adapters" / "ns" / "lorachat.json").read_text())
    assert "lm_head" not in meta["train"]["targets"]
    assert meta["train"]["null_space"] == 0.05 and meta["train"]["anchor_tokens"] == 64 and meta["ungated"]["probes"] == 8
    code, out = transcript(session, [":train bad null_space=2"])
    assert "error: null_space" in out and "Traceback" not in out, out
    code, out = transcript(session, [":train none null_space=1e-12 steps=2 until=steps"])
    assert "error: null_space=1e-12 leaves the adapter no direction to learn in" in out and "Traceback" not in out, out
    assert not (home / "adapters" / "none").exists()


def test_null_space_refuses_fsdp_in_one_line():
    config = dataclasses.replace(recipe.DEFAULTS, null_space=0.05)
    with pytest.raises(LorachatError, match="null_space: not under FSDP"):
        null_space.held(object(), None, config, None, fsdp=True)
    assert null_space.held(object(), None, recipe.DEFAULTS, None, fsdp=False) is None


def test_an_interrupt_between_a_step_and_its_projection_still_leaves_lora_a_projected(tmp_path, monkeypatch):
    """A second Ctrl-C (keep=partial saves the run) can land between optimizer.step() and the
    projection: the run still ends with every lora_A off the anchors' directions."""
    from lorachat.models.loader import load_model

    loaded = load_model(str(model_dir(tmp_path, "llama")), device="cpu", dtype="float32")
    config = dataclasses.replace(recipe.DEFAULTS, steps=6, until="steps", anchors=0, probes=0, lr=5e-3,
                                 null_space=0.05, keep="partial")
    anchors = locality.anchor_reference(loaded.model, loaded.tokenizer, "Answer.", 8, locality.LocalityOptions(max_new_tokens=8))
    model = lora.wrapped(loaded.model, config)
    real, calls = trainer.one_step, []

    def interrupted_after_the_third(*args):   # the optimizer has stepped; the projection has not run
        out = real(*args)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(trainer, "one_step", interrupted_after_the_third)
    result = trainer.run(model, loaded.tokenizer, planning.plan(model, loaded.tokenizer, examples_of(PAIRS[:2]), config),
                         anchors=anchors)
    assert result.cancelled and result.steps == 2
    covs = null_space.covariances(model, locality.items_of(anchors), model.disable_adapter)
    assert _share_on_leading(model, covs, 0.05) < 1e-3
