"""A GGUF file's header (llama.cpp's and Ollama's format), read without its tensor data.

`read_header` parses the metadata and tensor table (milliseconds), and `check_readable` says in
one line whether the installed transformers can load the file as a causal LM and dequantise its
tensor types, and whether the header's sizes are its tensors' (`check_consistent`), so a file it
cannot read fails before any time is spent on it. `sha256_of` names a
file's content for provenance. models/gguf_files.py converts a readable file; models/converted.py
decides when.
"""
import contextlib
import hashlib
import io
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lorachat.core.errors import LorachatError

_CHUNK = 1 << 20
MAGIC = b"GGUF"                 # a GGUF file's first four bytes, whatever its name
# transformers 5.x reads these GGUF architectures, but not as a causal language model
_NOT_CAUSAL = {"t5", "t5encoder", "umt5"}
# llama.cpp's spelling -> transformers' one, for the names transformers renames before its own check
_GGUF_SPELLING = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}


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
    shapes: dict = field(default_factory=dict)      # tensor name -> its dimensions, GGUF's order (the row first)
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
            if reader.take(4) != MAGIC:
                raise LorachatError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')")
            version, tensor_count, kv_count = reader.unpack("<IQQ")
            if version not in (2, 3):
                raise LorachatError(f"{path} is GGUF version {version}; transformers reads versions 2 and 3")
            metadata = {}
            for _ in range(kv_count):
                key = reader.string()
                metadata[key] = reader.value(reader.unpack("<I")[0])
            quant_types, shapes, data_end = Counter(), {}, 0
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
                shapes[name] = shape
                data_end = max(data_end, offset + elements // block * nbytes)
            alignment = metadata.get("general.alignment", 32)
            data_start = -(-reader.position // alignment) * alignment
    except OSError as exc:
        raise LorachatError(f"cannot read {path}: {exc.strerror or exc}") from None
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str):
        raise LorachatError(f"{path} is a GGUF file without general.architecture in its metadata")
    header = GgufHeader(path, version, architecture, metadata.get("general.name"), metadata,
                        quant_types, list(shapes), shapes, data_start + data_end, size)
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
    spelling), or None when its GGUF internals are not where transformers 5.17-5.25 keeps them."""
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
    check_consistent(header)


def check_consistent(header: GgufHeader) -> None:
    """Raise LorachatError with one line when the header's sizes are not the tensors': transformers
    builds the model from the header, so a wrong embedding_length fails deep inside it and a wrong
    block_count loads silently (too few layers answer garbage, too many are left random)."""
    arch, name = header.architecture, header.path.name
    width, embedding = header.metadata.get(f"{arch}.embedding_length"), header.shapes.get("token_embd.weight")
    if isinstance(width, int) and embedding and embedding[0] != width:
        raise LorachatError(f"{name}: {arch}.embedding_length is {width}, but its tensors are {embedding[0]} wide "
                            f"(token_embd.weight: {' x '.join(map(str, embedding))}); the header does not describe "
                            "this file's weights")
    blocks = header.metadata.get(f"{arch}.block_count")
    layers = {int(found.group(1)) for tensor in header.shapes if (found := re.match(r"blk\.(\d+)\.", tensor))}
    if isinstance(blocks, int) and layers and (blocks != len(layers) or max(layers) + 1 != len(layers)):
        raise LorachatError(f"{name}: {arch}.block_count is {blocks}, but the file holds {len(layers)} layers "
                            f"(blk.0 to blk.{max(layers)}); the header does not describe this file's weights")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
