"""GGUF files (llama.cpp's and Ollama's format) -> a plain transformers model folder, converted once.

transformers reads GGUF (`from_pretrained(dir, gguf_file=name)`, dequantising every tensor), but a
model loaded that way keeps a GGUF "quantizer" that refuses `save_pretrained` and training, and
reading the file costs seconds at every start. So the file is converted once into an ordinary
folder: config.json, generation_config.json, model.safetensors (float32: the dequantised values
exactly) and the tokenizer files with the chat template, which `from_pretrained(folder)` loads
offline. `read_header` and `check_readable` look at a file's header only (milliseconds), so a file
transformers cannot read fails with one line before any time is spent on it.

Knows nothing about where folders are kept (models/converted.py writes them into the cache, atomically)
or about sessions.
"""
import contextlib
import copy
import hashlib
import io
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lorachat.core.errors import LorachatError

_CHUNK = 1 << 20
_GGUF_MAGIC = b"GGUF"
# transformers 5.x reads these GGUF architectures, but not as a causal language model
_NOT_CAUSAL = {"t5", "t5encoder", "umt5"}
# llama.cpp's spelling -> transformers' one, for the names transformers renames before its own check
_GGUF_SPELLING = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}


# --- what the file is ----------------------------------------------------------------------------

@dataclass
class GgufHeader:
    """What a GGUF file's header says: enough to decide whether transformers can read it."""
    path: Path
    version: int
    architecture: str
    name: str | None
    metadata: dict                  # scalar and string values; arrays as their length
    quant_types: Counter = field(default_factory=Counter)   # tensor type name -> how many tensors
    tensor_names: list = field(default_factory=list)
    data_end: int = 0               # where the last tensor's bytes end: a shorter file is truncated
    size: int = 0                   # the file's size in bytes


def read_header(path: Path) -> GgufHeader:
    """Parse a GGUF file's metadata and tensor table (no tensor data: about 2 MB here, milliseconds).

    Raises LorachatError with one line for a file that is not GGUF, is cut short, or is malformed."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            reader = _Reader(io.BufferedReader(handle, _CHUNK), path)
            if reader.take(4) != _GGUF_MAGIC:
                raise LorachatError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')")
            version, tensor_count, kv_count = reader.unpack("<IQQ")
            if version not in (2, 3):
                raise LorachatError(f"{path} is GGUF version {version}; transformers reads versions 2 and 3")
            metadata = {}
            for _ in range(kv_count):
                key = reader.string()
                metadata[key] = reader.value(reader.unpack("<I")[0])
            quant_types, names, data_end = Counter(), [], 0
            for _ in range(tensor_count):
                name = reader.string()
                (dims,) = reader.unpack("<I")
                shape = reader.unpack(f"<{dims}Q")
                raw_type, offset = reader.unpack("<IQ")
                try:
                    qtype = GGMLQuantizationType(raw_type)
                except ValueError:
                    raise LorachatError(f"{path}: tensor {name} has ggml type {raw_type}, which the "
                                        f"installed gguf package does not know") from None
                block, nbytes = GGML_QUANT_SIZES[qtype]
                elements = 1
                for dim in shape:
                    elements *= dim
                quant_types[qtype.name] += 1
                names.append(name)
                data_end = max(data_end, offset + elements // block * nbytes)
            alignment = metadata.get("general.alignment", 32)
            data_start = -(-reader.position // alignment) * alignment
    except OSError as exc:
        raise LorachatError(f"cannot read {path}: {exc.strerror or exc}") from None
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str):
        raise LorachatError(f"{path} is a GGUF file without general.architecture in its metadata")
    header = GgufHeader(path, version, architecture, metadata.get("general.name"), metadata,
                        quant_types, names, data_start + data_end, size)
    if size < header.data_end:
        raise LorachatError(f"{path} is cut short: {size:,} bytes where its tensor table needs "
                            f"{header.data_end:,} (an interrupted download or copy?)")
    return header


class _Reader:
    """Little-endian GGUF fields off a buffered file; running out of file is one clear error."""

    _SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

    def __init__(self, handle, path):
        self.handle, self.path, self.position = handle, path, 0

    def take(self, count: int) -> bytes:
        data = self.handle.read(count)
        self.position += len(data)
        if len(data) != count:
            raise LorachatError(f"{self.path} is cut short: it ends inside its GGUF header "
                                f"(after {self.position:,} bytes)")
        return data

    def skip(self, count: int) -> None:
        self.handle.seek(count, io.SEEK_CUR)    # checked by the next read, or by the size test
        self.position += count

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def string(self) -> str:
        (length,) = self.unpack("<Q")
        if length > 1 << 30:
            raise LorachatError(f"{self.path} is not a valid GGUF file (a string of {length:,} bytes)")
        return self.take(length).decode("utf-8", errors="replace")

    def value(self, kind: int):
        if kind in self._SCALARS:
            return self.unpack(self._SCALARS[kind])[0]
        if kind == 8:
            return self.string()
        if kind == 9:                           # an array: its length is all that is kept
            element, count = self.unpack("<IQ")
            if element in self._SCALARS:
                self.skip(count * struct.calcsize(self._SCALARS[element]))
            elif element == 8:
                for _ in range(count):
                    (length,) = self.unpack("<Q")
                    self.skip(length)
            else:
                raise LorachatError(f"{self.path} is not a valid GGUF file (an array of value type {element})")
            return count
        raise LorachatError(f"{self.path} is not a valid GGUF file (a metadata value of type {kind})")


def readable_architectures() -> set[str] | None:
    """The GGUF `general.architecture` values this transformers loads as a causal LM (llama.cpp's
    spelling), or None when its GGUF internals are not where transformers 5.17-5.24 keeps them."""
    names = set()
    try:
        from transformers.modeling_gguf_pytorch_utils import (
            GGUF_SUPPORTED_ARCHITECTURES,
        )
    except ImportError:
        return None
    names |= set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}   # sections, not architectures
    with contextlib.suppress(ImportError):   # the newer reader, which covers a few more (5.24: qwen35, lfm2)
        from transformers.integrations.gguf import GGUF_ARCHS
        names |= set(GGUF_ARCHS)
    names |= {gguf for gguf, hf in _GGUF_SPELLING.items() if hf in names}
    return names - _NOT_CAUSAL


def dequantisable_types(architecture: str) -> set[str]:
    """The tensor types transformers can dequantise for a file of this architecture: its own torch
    kernels for the architectures its newer reader covers, the gguf package's numpy code otherwise."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    with contextlib.suppress(ImportError):
        from transformers.integrations.gguf import GGUF_ARCHS
        from transformers.integrations.gguf.dequant import GGML_NAME
        if architecture in GGUF_ARCHS:
            return {"F32", "F16", "BF16"} | set(GGML_NAME.values())
    types = set()
    for qtype in GGMLQuantizationType:
        block, nbytes = GGML_QUANT_SIZES.get(qtype, (0, 0))
        if not nbytes:
            continue
        try:                                    # one block of zeros: microseconds, and exactly what it does
            quants.dequantize(np.zeros((1, nbytes), dtype=np.uint8), qtype)
        except Exception:                       # gguf has no dequantizer for this type, or it cannot even be tried
            continue
        types.add(qtype.name)
    return types


def check_readable(header: GgufHeader) -> None:
    """Raise LorachatError with one line when transformers cannot load this file as a causal LM."""
    architectures = readable_architectures()
    if architectures is not None and header.architecture not in architectures:
        raise LorachatError(f"{header.path.name}: architecture {header.architecture}: transformers cannot read it "
                            f"(it reads: {', '.join(sorted(architectures))})")
    types = dequantisable_types(header.architecture)
    unknown = sorted(set(header.quant_types) - types)
    if unknown:
        raise LorachatError(f"{header.path.name}: quant type {', '.join(unknown)}: transformers cannot dequantise it "
                            f"(it dequantises: {', '.join(sorted(types))})")


# --- the conversion ------------------------------------------------------------------------------

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
        with _quiet():
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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
