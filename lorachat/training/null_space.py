"""null_space=EPS: an adapter kept off the directions the base's ordinary text uses (AlphaEdit's null
space, arXiv 2410.02355, applied to LoRA's input side). For each layer the adapter targets, the
inputs it sees on the anchor questions and the base's answers to them give a covariance; its leading
eigenvectors holding all but a share EPS of the energy span what ordinary text uses there, and each
lora_A is kept orthogonal to them (projected at the start and after every optimizer step), so
ΔW x = B A x stays small for inputs like those. Knows nothing about the loop beyond being called.
"""
from lorachat.core.errors import LorachatError


def covariances(model, items, base, batch: int = 16, adapter: str | None = None) -> dict:
    """{a LoRA layer's name (of `adapter` when given; other loaded adapters may target other layers):
    X^T X (float32) of the inputs it sees} over the tokens of `items`
    ((input_ids, labels) of the anchors with the base's answers; padding left out), `batch` rows a
    pass, under `base()` (the model answering as the base: the layer is called, its LoRA branch is not)."""
    import torch

    from lorachat.scoring.batches import collate, model_device

    sums, hooks, batch_mask = {}, [], {}
    for name, module in model.named_modules():
        if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict) and (adapter is None or adapter in module.lora_A):
            def hook(mod, args, name=name):
                x = args[0].detach()   # (rows, tokens, width), or flattened (OPT's fc1 sees rows*tokens)
                x = x.reshape(-1, x.shape[-1])[batch_mask["now"]].float()
                sums[name] = sums.get(name, 0) + x.T @ x
            hooks.append(module.register_forward_pre_hook(hook))
    if not hooks:
        raise LorachatError("null_space: the model has no LoRA layers")
    device = model_device(model)
    try:
        with torch.no_grad(), base():
            for start in range(0, len(items), batch):
                input_ids, _, mask = collate(items[start:start + batch], 0, device)
                batch_mask["now"] = mask.bool().reshape(-1)
                model(input_ids=input_ids, attention_mask=mask)
    finally:
        for h in hooks:
            h.remove()
    return sums


class Projection:
    """Each targeted layer's lora_A held in the directions that carry the last `eps` of its inputs'
    energy on the anchors."""

    def __init__(self, model, items, eps: float, base, adapter: str):
        import torch

        self.eps, self.pairs, self.dims = eps, [], []   # dims: each layer's null space, in dimensions
        modules = dict(model.named_modules())
        for name, cov in covariances(model, items, base, adapter=adapter).items():
            values, vectors = torch.linalg.eigh(cov.double())  # ascending
            values = values.clamp(min=0)
            spare = vectors[:, values.cumsum(0) <= eps * values.sum()]
            weight = modules[name].lora_A[adapter].weight
            self.pairs.append((weight, (spare @ spare.T).to(weight.device, torch.float32)))
            self.dims.append(spare.shape[1])
        if not self.pairs:   # the hooks saw no input: the anchors never reached a LoRA layer
            raise LorachatError("null_space: no anchor reached the adapter's layers")
        if min(self.dims) == 0:   # lora_A would be held at zero there, and nothing could be learnt
            raise LorachatError(f"null_space={eps:g} leaves the adapter no direction to learn in (the last {eps:g} of "
                                "the inputs' energy lies in no whole direction): raise it (0.05 was measured)")
        self.project()

    def project(self) -> None:
        import torch

        with torch.no_grad():
            for weight, p in self.pairs:
                weight.copy_((weight.float() @ p).to(weight.dtype))


def held(model, anchors, config, base, fsdp: bool):
    """The Projection `config.null_space` asks for (over the anchors' items, a locality.Reference),
    made before the first step, or None when it is 0."""
    if not config.null_space:
        return None
    if fsdp:
        raise LorachatError("null_space: not under FSDP (its shards split the lora_A matrices); train without it, or with DDP")
    from lorachat.scoring import locality

    return Projection(model, locality.items_of(anchors), config.null_space, base or model.disable_adapter,
                      getattr(model, "active_adapter", "default"))
