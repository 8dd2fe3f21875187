"""The taught answers' EOS token weighted by W in the loss (issue 36's "weight on the EOS token"):
scale_sweep with trainer's step objective changed for this run only.

    python -m bench.research.eos_weight 0.1 --facts tune --method now --seeds 0 --scales 1
"""
import sys
W = float(sys.argv.pop(1))
from lorachat.training import steps
import lorachat.training.trainer  # noqa
orig = steps._objective
EOS = {}
def objective(shifted, targets, mine, riders, blocks, world, step_tokens, extra_tokens, extra_weight):
    import torch.nn.functional as F
    summed, obj = orig(shifted, targets, mine, riders, blocks, world, step_tokens, extra_tokens, extra_weight)
    t = targets[mine]
    per = F.cross_entropy(shifted[mine], t, reduction="none")
    eos = (t == EOS["id"]).float()
    return summed, obj - (1 - W) * (per * eos).sum() * (world / step_tokens)
steps._objective = objective
from lorachat.models import loader
orig_load = loader.load_model
def load(*a, **k):
    L = orig_load(*a, **k); EOS["id"] = L.tokenizer.eos_token_id; return L
loader.load_model = load
from bench.research import scale_sweep
sys.exit(scale_sweep.main(sys.argv[1:]))
