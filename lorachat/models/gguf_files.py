"""GGUF files (llama.cpp's and Ollama's format) -> a plain transformers model folder, converted once.

transformers reads GGUF (`from_pretrained(dir, gguf_file=name)`, dequantising every tensor), but a
model loaded that way keeps a GGUF "quantizer" that refuses `save_pretrained` and training, and
reading the file costs seconds at every start. So the file is converted once into an ordinary
folder: config.json, generation_config.json, model.safetensors (float32: the dequantised values
exactly) and the tokenizer files with the chat template, which `from_pretrained(folder)` loads
offline. models/gguf_header.py reads and checks the file's header first, so a file transformers
cannot read fails with one line before any time is spent on it.

Knows nothing about where folders are kept (models/converted.py writes them into the cache, atomically)
or about sessions.
"""
import contextlib
import copy
import io
import struct
from pathlib import Path

from lorachat.core.errors import LorachatError
from lorachat.models.gguf_header import check_readable, read_header, sha256_of

def convert(gguf_path: Path, work: Path, progress=print, sha256: str | None = None) -> dict:
    """Read the GGUF file through transformers and write a plain model folder into `work` (which
    must exist and be empty); return facts for provenance. `progress(line)` hears each phase.

    The weights are saved in float32: a Q4_1/Q8_0 value is a float16 scale times a small integer
    plus a float16 offset, which float32 holds exactly and bfloat16 does not, so the folder is the
    GGUF model itself (logits equal to the last bit on CPU) at twice the bytes of bfloat16.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, work = Path(gguf_path), Path(work)
    if not work.is_dir() or any(work.iterdir()):
        raise LorachatError(f"{work} must be an existing, empty folder")
    header = read_header(gguf_path)
    check_readable(header)
    types = ", ".join(f"{name} x{count}" for name, count in header.quant_types.most_common())
    progress(f"reading {gguf_path.name} ({header.size / 1e6:.0f} MB, {header.architecture}, {types})")
    source_sha256 = sha256 or sha256_of(gguf_path)
    where = dict(pretrained_model_name_or_path=str(gguf_path.parent), gguf_file=gguf_path.name)
    try:
        with _quiet(), read_once():
            tokenizer = AutoTokenizer.from_pretrained(**where)
            loaded = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    except (OSError, ValueError, KeyError, NotImplementedError, struct.error) as exc:
        raise LorachatError(f"transformers cannot read {gguf_path.name}: {_first_line(exc)}") from None

    config = copy.deepcopy(loaded.config)
    with contextlib.suppress(AttributeError):   # else the folder would name the GGUF file as its weights
        del config.quantization_config
    config.name_or_path = ""                    # not a path or hub id this folder could be loaded from
    with contextlib.suppress(AttributeError):   # the GGUF's general.name, which transformers keeps under this key
        del config._model_name_or_path
    config.dtype = torch.float32
    parameters = sum(p.numel() for p in loaded.parameters())     # tied weights once
    template = " with its chat template" if tokenizer.chat_template else " (the GGUF has no chat template)"
    progress(f"writing model.safetensors ({parameters:,} parameters in float32) and the tokenizer{template}")
    with _quiet():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    if config.tie_word_embeddings:              # one matrix, saved once, as in the GGUF (no output.weight there)
        model.tie_weights()
    _check_same(loaded, model, tokenizer)
    del loaded
    model.generation_config = _generation_config(config)
    # the GGUF reader leaves "no limit" (1e30); the model attends to max_position_embeddings tokens
    tokenizer.model_max_length = config.max_position_embeddings
    for key in ("is_local", "local_files_only"):    # how it was loaded, which would be saved as if a setting
        tokenizer.init_kwargs.pop(key, None)
    from safetensors import SafetensorError

    try:
        with _quiet():                          # "Writing model shards" bar
            model.save_pretrained(work)
            tokenizer.save_pretrained(work)
    except SafetensorError as exc:              # a full disk, as safetensors reports it: OSError's kin
        raise OSError(_first_line(exc)) from None
    _check_folder(work, tokenizer)
    return {
        "source": gguf_path.name,
        "source_sha256": source_sha256,
        "source_bytes": header.size,
        "architecture": header.architecture,
        "gguf_name": header.name,
        "quant_types": dict(header.quant_types.most_common()),
        "model_type": config.model_type,
        "parameters": parameters,
        "dtype": "float32",
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "max_position_embeddings": config.max_position_embeddings,
        "chat_template": bool(tokenizer.chat_template),
        "transformers": transformers.__version__,
        "files": sorted(path.name for path in work.iterdir()),
    }


def _generation_config(config):
    """Token ids only: no sampling flags or lengths (lorachat passes its own settings each time)."""
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                            pad_token_id=config.pad_token_id)


def _check_same(loaded, model, tokenizer) -> None:
    """The copied model must give the GGUF model's logits: a tied or renamed weight going astray
    would not fail `load_state_dict`, so one short forward pass checks it."""
    import torch

    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        diff = (loaded(ids).logits - model(ids).logits).abs().max().item()
    if diff > 1e-4:                             # measured: 0.0 (the same float32 weights, the same kernels)
        raise LorachatError(f"the converted model differs from the GGUF one (max logit difference {diff:g})")


def _check_folder(work: Path, tokenizer) -> None:
    """What `from_pretrained(work)` needs is there, and the chat template (if any) comes back."""
    from transformers import AutoTokenizer

    missing = [name for name in ("config.json", "generation_config.json", "model.safetensors",
                                 "tokenizer.json", "tokenizer_config.json") if not (work / name).is_file()]
    if missing:
        raise LorachatError(f"the converted folder {work} lacks {', '.join(missing)}")
    if AutoTokenizer.from_pretrained(work).chat_template != tokenizer.chat_template:
        raise LorachatError(f"the chat template did not survive saving the tokenizer to {work}")


@contextlib.contextmanager
def read_once():
    """transformers reads a GGUF file's header anew for the config, the tokenizer and the weights, and
    maps its tensor names by asking gguf for the architecture's name map once per module of the
    model (397 times for SmolLM2), which gguf builds anew each time: for SmolLM2's file, 3 readers
    of ~4 s (its 49,152-token vocabulary) and ~4 s of maps, of 18 s. Within a conversion each is made
    once; the readers are only read (a read-only memory map), and the folder written is the same to
    the byte."""
    import functools

    import gguf

    made = gguf.GGUFReader, gguf.get_tensor_name_map
    readers = {}

    def reader(path, mode="r"):
        key = (str(path), mode)
        if mode != "r":
            return made[0](path, mode)
        if key not in readers:
            readers[key] = made[0](path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=4)(made[1])
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = made


@contextlib.contextmanager
def _quiet():
    """Silence transformers while it works: its GGUF reader draws its own tqdm bar on stderr
    ("Converting and de-quantizing GGUF tensors"), which `disable_progress_bar` does not reach, and
    its own bars ("Loading weights", "Writing model shards") and log lines, which it does."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
