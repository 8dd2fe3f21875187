"""Whether vLLM would take an adapter directory, read from its files alone: vLLM's refusals
(PEFTHelper._validate_features and validate_legal in vllm/lora/peft_helper.py), its allowed
--max-lora-rank values (vllm/config/lora.py), and the module names its LoRA support maps for the
architectures lorachat knows (vllm/model_executor/models/opt.py, llama.py). Each refusal is one
LorachatError with the reason. Knows nothing about the command line or the REPL.
"""
from dataclasses import dataclass
from pathlib import Path

from lorachat.adapters import provenance
from lorachat.core.errors import LorachatError
from lorachat.core.prompts import DEFAULT_INSTRUCTION, MAX_NEW_TOKENS

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py MaxLoRARanks
# the module names vLLM's LoRA support maps, per architecture: its linear layers with packed
# qkv_proj / gate_up_proj unpacked, and its embedding_modules. Other architectures: vLLM checks.
LORA_MODULES = {
    "OPTForCausalLM": {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "project_in", "project_out"},
    "LlamaForCausalLM": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                         "embed_tokens", "lm_head"},
}
# architectures whose vLLM model class implements SupportsLoRA (vllm/model_executor/models/*.py; OPT since
# vLLM 0.11), and ones whose class does not: vLLM serves those without adapters only
LORA_ARCHITECTURES = {*LORA_MODULES, "MistralForCausalLM", "MixtralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                      "GemmaForCausalLM", "Gemma2ForCausalLM", "Phi3ForCausalLM", "GraniteForCausalLM"}
NO_LORA = {"GPT2LMHeadModel": "gpt2.py", "GPTJForCausalLM": "gpt_j.py", "GPTNeoXForCausalLM": "gpt_neox.py"}
# adapter_config.json features vLLM refuses (PEFTHelper._validate_features), and why
FEATURES = (
    ("use_dora", "DoRA (use_dora): vLLM does not support DoRA"),
    ("modules_to_save", "modules_to_save: vLLM serves LoRA matrices only, not fully trained modules"),
    ("lora_bias", "lora_bias: vLLM does not support LoRA biases"),
    ("alora_invocation_tokens", "Activated LoRA (alora_invocation_tokens): vLLM does not support it"),
    ("layer_replication", "layer_replication: vLLM does not support it"),
    ("use_bdlora", "block-diagonal LoRA (use_bdlora): vLLM does not support it"),
    ("use_qalora", "QALoRA (use_qalora): vLLM does not support it"),
)
# per-module ranks and alphas: vLLM's PEFTHelper.from_dict keeps only its own fields (r, lora_alpha,
# target_modules, bias, modules_to_save, use_rslora, use_dora, ...) and scales every module by one
# lora_alpha / r (lora_alpha / sqrt(r) with use_rslora), so these are silently dropped
PATTERNS = ("rank_pattern", "alpha_pattern")
PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")  # inits that leave the base weights alone
WEIGHT_ENDS = (".lora_A.weight", ".lora_B.weight", ".lora_embedding_A", ".lora_embedding_B")


@dataclass(frozen=True)
class Served:
    name: str
    path: Path
    rank: int
    instruction: str | None   # the instruction its examples are asked under; None: several
    max_tokens: int
    origin: str = ""          # how its rank came about (a cat merge's sources)


def check(name: str, path: Path, config: dict, meta: dict, architecture: str) -> Served:
    """The adapter as vLLM would take it; raises with the reason where vLLM would refuse it."""
    if name.startswith("-"):   # --lora-modules -x=PATH: vLLM's argument parser reads it as an option
        raise LorachatError(f"a name starting with '-' reads as an option on vLLM's command line; "
                            f"`:rename {name} NEW` first")
    if architecture in NO_LORA:
        raise LorachatError(f"vLLM's {architecture} does not support LoRA (vllm/model_executor/models/"
                            f"{NO_LORA[architecture]} does not implement SupportsLoRA); `:export {name} DIR` writes "
                            f"a merged model vLLM can serve")
    for key, reason in FEATURES:
        if config.get(key):
            raise LorachatError(reason)
    if config.get("bias", "none") != "none":
        raise LorachatError(f"bias={config['bias']!r}: vLLM does not support adapter biases")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in PLAIN_INITS:
        raise LorachatError(f"init_lora_weights={init!r} changes the base weights when PEFT loads the adapter; "
                            f"vLLM serves the base as it is")
    # vLLM skips PEFT's saved copies of the base's embedding layers (`...base_layer.weight`), as here
    shapes = {key: shape for key, shape in weights(name, path).items() if "base_layer" not in key}
    odd = sorted(k for k in shapes if not k.endswith(WEIGHT_ENDS))
    if odd:
        raise LorachatError(f"holds weights vLLM cannot read as LoRA matrices, e.g. {odd[0]}")
    rank = adapter_rank(config, shapes)
    if rank > MAX_LORA_RANKS[-1]:
        raise LorachatError(f"r={rank} is above vLLM's largest --max-lora-rank ({MAX_LORA_RANKS[-1]})")
    for key in PATTERNS:
        if config.get(key):
            raise LorachatError(f"{key} {config[key]}: vLLM reads only r and lora_alpha and scales every module by "
                                f"lora_alpha/r={_scale(config)}, so these modules would be applied at another strength "
                                f"than trained")
    check_modules(shapes, architecture)
    # as long as the REPL lets any answer run (its default max_new_tokens), or the longest taught answer
    # where that is longer: capped at the taught answers, every other answer would be cut short
    longest = meta.get("max_answer_tokens")
    longest = longest if isinstance(longest, int) and not isinstance(longest, bool) else 0
    return Served(name, path.resolve(), rank, meta.get("instruction", DEFAULT_INSTRUCTION),
                  max(MAX_NEW_TOKENS, longest), _origin(meta))


def weights(name: str, path: Path) -> dict[str, tuple]:
    """{tensor name: shape} from adapter_model.safetensors' header (a pickle is never opened here)."""
    if not (path / provenance.SAFETENSORS).is_file() and (path / provenance.PICKLE).is_file():
        raise LorachatError(f"saved only as a pickle ({provenance.PICKLE}), which lorachat does not open to check: "
                            f"re-save it as safetensors")
    return provenance.weight_shapes(name, path, allow_pickle=False)


def adapter_rank(config: dict, shapes: dict[str, tuple]) -> int:
    """The largest rank vLLM must hold: r, any rank_pattern entry, and the ranks the weights really have
    (a `:merge method=cat` adapter's r is the sum of its sources')."""
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise LorachatError(f"r={r!r}: vLLM needs a positive whole rank")
    stored = [shape[0] for key, shape in shapes.items() if "lora_A" in key or "lora_embedding_A" in key]
    return max([r, *(config.get("rank_pattern") or {}).values(), *stored])


def check_modules(shapes: dict[str, tuple], architecture: str) -> None:
    known = LORA_MODULES.get(architecture)
    if known is None:
        return
    targets = {key.removeprefix(provenance.PEFT_PREFIX).rsplit(".lora_", 1)[0].rsplit(".", 1)[-1] for key in shapes}
    unmapped = sorted(targets - known)
    if unmapped:
        raise LorachatError(f"targets {', '.join(unmapped)}, which vLLM's LoRA support for {architecture} does not "
                            f"map (it maps {', '.join(sorted(known))})")


def _scale(config: dict) -> str:
    r, alpha = config.get("r"), config.get("lora_alpha", 8)
    if not isinstance(alpha, (int, float)):
        return "?"
    return f"{alpha / r ** 0.5 if config.get('use_rslora') else alpha / r:g}"


def _origin(meta: dict) -> str:
    ranks = meta.get("ranks")
    if meta.get("merged_from") and isinstance(ranks, dict):
        parts = " + ".join(f"{source} r={ranks.get(source, '?')}" for source in meta["merged_from"])
        return f"{meta.get('method', '?')} merge of {parts}"
    return ""


def max_lora_rank(ranks) -> int:
    """vLLM's smallest allowed --max-lora-rank that holds every rank."""
    largest = max(ranks)
    return next(value for value in MAX_LORA_RANKS if value >= largest)
