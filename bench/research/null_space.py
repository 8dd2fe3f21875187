"""An adapter that leaves the base's other answers alone by construction (issue 36): LoRA's input
side kept in the directions the base's ordinary text does not use (AlphaEdit's null space, arXiv
2410.02355, on a LoRA adapter).

    python -m bench.research.null_space --facts tune --methods now,null=0.01,travel+null=0.01 --seeds 0

For each module the adapter targets, the inputs it sees on the anchors' questions and the base's
answers to them (64 anchors, 64 tokens: what travel=on rehearses; none of the probes) give a
covariance; its leading eigenvectors holding all but a share EPS of the energy are the directions
ordinary text uses, and lora_A is kept orthogonal to them: projected at creation and after every
optimizer step, so that ΔW x = B A x is small for any x in that span. A method `M+null=EPS` is
smol_locality's method M so constrained; everything else (the measure, the rows) is smol_locality's.
Knows nothing about the REPL.
"""
import dataclasses
import sys

import torch
import torch.optim.optimizer as optim_hooks

from bench.research import smol_locality
from lorachat.scoring import locality
from lorachat.training import lora

TARGET = "up_proj"   # what `:train`'s default targets (fc1) is on a Llama base


def inputs_covariance(model, tokenizer, ref, target=TARGET) -> dict:
    """{module name: X^T X (float64) of the inputs `target` modules see over the reference's
    prompts and answers}."""
    sums, hooks = {}, []
    for name, module in model.named_modules():
        if name.endswith(target) and isinstance(module, torch.nn.Linear):
            def hook(mod, args, name=name):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                sums[name] = sums.get(name, 0) + x.T @ x
            hooks.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for ids, _ in locality.items_of(ref):
                model(input_ids=torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    return sums


def projectors(covariances: dict, eps: float) -> dict:
    """{module name: the projector onto the directions holding the last `eps` of the energy}."""
    out = {}
    for name, cov in covariances.items():
        values, vectors = torch.linalg.eigh(cov)            # ascending
        energy = values.clamp(min=0).cumsum(0) / values.clamp(min=0).sum()
        null = vectors[:, energy <= eps]
        out[name] = (null @ null.T).float()
    return out


class Constrained:
    """lora_A of every targeted module kept in its projector's range: at creation and after every
    optimizer step (torch's global step post-hook, removed on exit)."""

    def __init__(self, proj: dict):
        self.proj, self.params, self.handle = proj, [], None

    def attach(self, model):
        self.params = []
        for name, module in model.named_modules():
            if name.endswith("lora_A.default"):
                key = name.removeprefix("base_model.model.").removesuffix(".lora_A.default")
                self.params.append((module.weight, self.proj[key]))
        assert self.params, "no lora_A found"
        self.project()
        self.handle = optim_hooks.register_optimizer_step_post_hook(lambda *a: self.project())
        return model

    @torch.no_grad()
    def project(self):
        for weight, p in self.params:
            weight.copy_((weight.float() @ p).to(weight.dtype))

    def detach(self):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    i = argv.index("--methods")
    methods = argv[i + 1].split(",")
    plain_methods = []
    eps_of = {}
    for m in methods:
        parts = m.split("+")
        eps = [float(p.split("=")[1]) for p in parts if p.startswith("null=")]
        rest = "+".join(p for p in parts if not p.startswith("null=")) or "now"
        eps_of[rest if not eps else m] = (rest, eps[0] if eps else None)
        plain_methods.append(rest if not eps else m)

    covariance = {}
    wrapped = lora.wrapped
    config_for = smol_locality.config_for
    current = {}

    def config_for_null(name, extra):
        rest, eps = eps_of.get(name, (name, None))
        current["eps"] = eps
        return config_for(rest, extra)

    def wrapped_null(model, config):
        if current.get("eps") is None:
            return wrapped(model, config)
        if not covariance:   # the base's inputs on the anchors (64 questions, 64 tokens of answer), once
            rehearsed = dataclasses.replace(config, anchor_pool=64, anchor_tokens=64)
            ref, _ = smol_locality.anchor_reference(model, current["tokenizer"], current["cache"], rehearsed)
            covariance.update(inputs_covariance(model, current["tokenizer"], ref))
        made = wrapped(model, config)
        proj = projectors(covariance, current["eps"])
        dims = sorted({int(torch.trace(p).round()) for p in proj.values()})
        print(f"null={current['eps']}: null space dims {dims[0]}..{dims[-1]} of {next(iter(proj.values())).shape[0]}",
              file=sys.stderr, flush=True)
        if "constraint" in current:
            current["constraint"].detach()
        current["constraint"] = Constrained(proj)
        return current["constraint"].attach(made)

    smol_locality.config_for = config_for_null
    smol_locality.lora.wrapped = wrapped_null
    cache_init = smol_locality.Cache.__init__

    def cache_init_keep(self, *a, **k):
        cache_init(self, *a, **k)
        current["cache"] = self

    smol_locality.Cache.__init__ = cache_init_keep
    base_figures = smol_locality.base_figures

    def base_figures_keep(base, tokenizer, *a, **k):
        current["tokenizer"] = tokenizer
        return base_figures(base, tokenizer, *a, **k)

    smol_locality.base_figures = base_figures_keep
    argv[i + 1] = ",".join(plain_methods)
    return smol_locality.main(argv)


if __name__ == "__main__":
    sys.exit(main())
