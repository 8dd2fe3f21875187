"""Fast, exact adapter switching around one PEFT-wrapped base model.

Switching sets two flags on each LoRA layer: which adapter it applies, and whether adapters are on.
No module walk over every loaded adapter (PEFT's `set_adapter` is O(layers x adapters)), no weight
copies. For decoding, a lone active plain-LoRA adapter is merged lazily: the first forward pass
without gradients in eval mode after a switch computes `W + s*B@A` into one reusable buffer per
touched weight and points the layer at that buffer (on the CPU only while those buffers stay under
CPU_MERGE_BYTES: above, answers go through PEFT's own forward). The base's own Parameter objects are never
written, so going back to the base (or on to another adapter) is a pointer swap and bit-exact — no
fp16 merge/unmerge drift. A forward with gradients or in training mode puts the base's weights back
first, and so do `unmerged()` (mixed-adapter batches, export, merges).

Knows nothing about files, sessions or commands; it touches PEFT layer attributes, so it is tied to
the installed PEFT like fast_load.py (checked in `supported`).
"""
import contextlib

import torch

# The merged buffers are a copy of every matrix the adapter touches. On the CPU, decoding reads each
# weight once per token whether merged or not, so merging buys little there and costs those bytes:
# OPT-2.7B in bf16 with LoRA on fc1 decoded 1.38 tokens/s merged, 1.34 unmerged and 1.37 as the base,
# for 1.7 GB of copies (a third of the model; bench/RESULTS.md, "The default model on this CPU"); smol's copies
# are 53 MB and buy 4%. Above this many bytes a CPU answers unmerged; a GPU always merges.
CPU_MERGE_BYTES = 1 << 30


class Switch:
    def __init__(self, peft_model, merge_bytes: int | None = None):
        self.model = peft_model
        self.merge_bytes = merge_bytes   # the most bytes of merged buffers (None: CPU_MERGE_BYTES on the CPU)
        self.active: str | None = None
        self.merged = False
        self.suspended = 0
        self.pristine = {}    # LoRA layer -> the base's own weight Parameter (never written)
        self.buffers = {}     # LoRA layer -> Parameter holding pristine + delta of one adapter
        self.buffer_key = None
        self.layers = []
        self.refresh()
        inner = peft_model.base_model.model
        # PeftModel(...) reaches the inner model via .forward (no hooks), generate() via __call__:
        # hook both so every path sees the right weights.
        self.hooks = [m.register_forward_pre_hook(self._before_forward) for m in (peft_model, inner)]

    # --- structure --------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the LoRA layers after adapters were added or removed (call while unmerged)."""
        from peft.tuners.lora import LoraLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        # Walk the model but not into LoRA layers, whose children grow with every loaded adapter.
        self.layers, self.aux, stack = [], [], [self.model]
        while stack:
            module = stack.pop()
            if isinstance(module, LoraLayer):
                self.layers.append(module)
            elif isinstance(module, AuxiliaryTrainingWrapper):
                self.aux.append(module)
            else:
                stack.extend(module.children())
        for layer in self.layers:
            self.pristine.setdefault(layer, layer.base_layer.weight)
        live = set(self.layers)
        for table in (self.pristine, self.buffers):
            for layer in [k for k in table if k not in live]:
                del table[layer]
        self.buffer_key = None

    def eval_adapter(self, name: str) -> None:
        """Eval mode for adapter `name`'s new modules (dropout off) without walking the whole model."""
        for layer in self.layers:
            for table in layer.children():
                if isinstance(table, torch.nn.ModuleDict) and name in table:
                    table[name].eval()

    def detach(self) -> None:
        """Before unwrapping: base weights back, hooks off."""
        self._unmerge()
        for hook in self.hooks:
            hook.remove()
        self.hooks = []

    @staticmethod
    def supported(layers) -> bool:
        return all(hasattr(l, "_active_adapter") and hasattr(l, "_disable_adapters") for l in layers)

    # --- switching --------------------------------------------------------------------------
    def set_active(self, name: str | None) -> None:
        """Make `name` answer (None: the base alone). Unmerged until the next no-grad forward."""
        self._unmerge()
        self.active = name
        if not self.supported(self.layers):  # another PEFT: its own (slower) public API
            if name is None:
                self.model.base_model.disable_adapter_layers()
            else:
                self.model.base_model.enable_adapter_layers()
                self.model.base_model.set_adapter(name)
            return
        for layer in self.layers:
            if name is not None:
                layer._active_adapter = [name]
            layer._disable_adapters = name is None
        if name is not None:
            self.model.base_model.active_adapter = name
        for module in self.aux:  # modules_to_save / trainable tokens: PEFT's own API, as its _set_adapter
            # uses it: a wrapper that does not hold the adapter (or the base) has none active and passes
            # through to the original module (which is also what PEFT's unload then puts back)
            module.set_adapter(name if name in module._adapters else [])

    @contextlib.contextmanager
    def unmerged(self, enabled: bool = False):
        """Base weights in place for the duration (and every layer's adapters on when `enabled`,
        as PEFT's mixed-adapter batches need); the previous state comes back afterwards, also
        when the body fails: forward pre-hooks added to the LoRA layers meanwhile are removed.
        PEFT 0.21's `_enable_peft_forward_hooks` (a `generate(adapter_names=...)`) removes its
        hooks only when the forward succeeds; left behind, every later forward fails with them."""
        self._unmerge()
        self.suspended += 1
        hooked = {module: set(module._forward_pre_hooks) for module in [*self.layers, *self.aux]}
        try:
            if enabled:
                for layer in self.layers:
                    layer._disable_adapters = False
            yield
        finally:
            self.suspended -= 1
            for module, kept in hooked.items():
                for key in [k for k in module._forward_pre_hooks if k not in kept]:
                    del module._forward_pre_hooks[key]
                    module._forward_pre_hooks_with_kwargs.pop(key, None)
            if enabled:
                self.set_active(self.active)

    @contextlib.contextmanager
    def disabled(self):
        """The base alone for the duration: base weights in place and no adapter applied (what
        training's KL rehearsal compares with), then as before. Unlike PEFT's `disable_adapter`,
        which toggles requires_grad on every adapter and whose flags a lazy merge undone meanwhile
        would overwrite, it only sets the layers' own switch."""
        self._unmerge()
        self.suspended += 1
        try:
            for layer in self.layers:
                layer._disable_adapters = True
            yield
        finally:
            self.suspended -= 1
            if not self.suspended:   # an inner one (the gate's background, made while deciding) leaves the base on
                self.set_active(self.active)

    def invalidate(self) -> None:
        """An adapter's weights or scale changed: merge afresh on the next forward."""
        self._unmerge()
        self.buffer_key = None

    # --- the lazy merge ---------------------------------------------------------------------
    def _before_forward(self, module, args):
        if self.active is None or self.suspended:
            return
        decoding = not (module.training or torch.is_grad_enabled())
        if decoding and not self.merged:
            self._merge()
        elif not decoding and self.merged:
            self._unmerge()

    def _mergeable(self, name: str, layers) -> bool:
        """Plain LoRA on ordinary Linear layers over floating-point weights (not DoRA, not
        quantized, no LoRA bias: the merge adds weights only): anything else answers unmerged,
        through PEFT's own forward."""
        from peft.tuners.lora import Linear

        return bool(layers) and self.supported(self.layers) and all(
            type(l) is Linear and name not in getattr(l, "lora_variant", {name: None})
            and not getattr(l, "lora_bias", {}).get(name, False)
            and self.pristine[l].dtype.is_floating_point for l in layers) and self._fits(layers)

    def _fits(self, layers) -> bool:
        """Whether the merged buffers of `layers` stay within merge_bytes (see CPU_MERGE_BYTES)."""
        limit = self.merge_bytes
        if limit is None:
            if self.pristine[layers[0]].device.type != "cpu":
                return True
            limit = CPU_MERGE_BYTES
        return sum(self.pristine[l].numel() * self.pristine[l].element_size() for l in layers) <= limit

    def _merge(self) -> None:
        name = self.active
        layers = [l for l in self.layers if name in l.lora_A]
        if not self._mergeable(name, layers):
            return
        key = (name, tuple((l.lora_A[name].weight.data_ptr(), l.lora_A[name].weight._version,
                            l.lora_B[name].weight.data_ptr(), l.lora_B[name].weight._version,
                            l.scaling[name]) for l in layers))
        with torch.inference_mode(False), torch.no_grad():
            if key != self.buffer_key:
                for layer in layers:
                    self._compute(layer, name)
                self.buffer_key = key
            for layer in layers:
                layer.base_layer.weight = self.buffers[layer]
            for layer in self.layers:
                layer._disable_adapters = True
        self.merged = True

    def _compute(self, layer, name: str) -> None:
        pristine = self.pristine[layer]
        buffer = self.buffers.get(layer)
        if buffer is None:
            buffer = self.buffers[layer] = torch.nn.Parameter(torch.empty_like(pristine), requires_grad=False)
        lora_a, lora_b = layer.lora_A[name].weight, layer.lora_B[name].weight
        left, right = (lora_a.T, lora_b.T) if layer.fan_in_fan_out else (lora_b, lora_a)
        scale = layer.scaling[name]
        if pristine.dtype == left.dtype == torch.float32:
            torch.addmm(pristine, left, right, alpha=scale, out=buffer.data)
        else:  # half-precision bases: add the delta in fp32, round once
            buffer.data.copy_(torch.addmm(pristine.float(), left.float(), right.float(), alpha=scale))

    def _unmerge(self) -> None:
        if not self.merged:
            return
        with torch.inference_mode(False), torch.no_grad():
            for layer in self.layers:
                if layer.base_layer.weight is not self.pristine[layer]:
                    layer.base_layer.weight = self.pristine[layer]
                layer._disable_adapters = self.active is None
        self.merged = False
