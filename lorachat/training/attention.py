"""Which attention kernel a training run uses: transformers' eager attention on a CPU, the model's own
(SDPA) everywhere else and for answering.

On a CPU, torch's fused attention (SDPA's flash kernel for the CPU) runs its backward pass slower than
eager attention's plain matrix products for the short rows lorachat trains (a question and its answer),
markedly in bf16: on smol (2 cores, bf16) a `:train` step took 0.30 s with SDPA and 0.26 s eager on
the two facts, 0.54 s and 0.45 s on the ten; in float32 3-4% less. Decoding stays with SDPA, about 7%
faster there (bench/RESULTS.md, "bf16 on the CPU"). Knows nothing about what is trained.
"""
import contextlib

EAGER_ON_CPU = "eager"


@contextlib.contextmanager
def for_training(model):
    """Within: `model` (a PeftModel or a plain one) attends eagerly if it is on the CPU and uses SDPA;
    the kernel it had is set back afterwards, also after an error."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = getattr(getattr(base, "config", None), "_attn_implementation", None)
    switched = False
    on_cpu = next(base.parameters()).device.type == "cpu"
    if on_cpu and before == "sdpa" and hasattr(base, "set_attn_implementation"):
        try:
            base.set_attn_implementation(EAGER_ON_CPU)
            switched = True
        except (ValueError, ImportError):   # a model without eager attention keeps its own
            pass
    try:
        yield
    finally:
        if switched:
            base.set_attn_implementation(before)
