"""Writing one GGUF file with the `gguf` package's GGUFWriter: metadata, then tensors streamed one at
a time (each made, converted and written before the next is made, so a model is never held twice
in another dtype), into a path the caller has made hidden and renames when it is whole.

Also reads a source GGUF's metadata back as the writer's entries (`copy_metadata`), so a file
converted from a GGUF keeps every key it had (tokenizer, merges, special tokens, chat template)
and only the tensors and their type change. Knows nothing about adapters or sessions; which
tensors and which metadata is the caller's choice (adapters/gguf_export.py).
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lorachat.core.errors import LorachatError

# quant= -> (ggml type of the 2-D weights, general.file_type); 1-D tensors (norms, biases) stay F32 as
# llama.cpp's converters keep them
QUANTS = {"f16": ("F16", "MOSTLY_F16"), "f32": ("F32", "ALL_F32"), "bf16": ("BF16", "MOSTLY_BF16"),
          "q8_0": ("Q8_0", "MOSTLY_Q8_0")}
# keys the writer sets itself, or that say what the tensors are (replaced, not copied)
_OWN_KEYS = ("general.architecture", "general.file_type", "general.alignment")


@dataclass
class Planned:
    """One tensor to write: its GGUF name, its shape (numpy order, rows first), and `make()`, which
    returns it as a float32 numpy array when its turn comes; `kind` a ggml type name or None for the
    file's own choice (`quant`); `raw`: bytes copied as they are (`kind` then names their type)."""
    name: str
    shape: tuple
    make: Callable
    kind: str | None = None
    raw: bool = False


def tensor_kind(planned: Planned, quant: str) -> str:
    """The ggml type a tensor is written in: its own, F32 for 1-D ones, else the file's, except Q8_0
    on rows that are not whole 32-value blocks (F16 then, as llama.cpp's converters fall back)."""
    if planned.kind:
        return planned.kind
    if len(planned.shape) < 2:
        return "F32"
    kind = QUANTS[quant][0]
    if kind == "Q8_0" and planned.shape[-1] % 32:
        return "F16"
    return kind


def write(path: Path, architecture: str, metadata: Callable, tensors: list[Planned], quant: str = "f16") -> None:
    """Write `path`: general.architecture, what `metadata(writer)` adds, the file type of `quant`,
    then `tensors` in order."""
    import gguf
    import numpy as np

    kinds = [gguf.GGMLQuantizationType[tensor_kind(t, quant)] for t in tensors]
    writer = gguf.GGUFWriter(str(path), architecture)
    metadata(writer)
    writer.add_file_type(int(gguf.LlamaFileType[QUANTS[quant][1]]))
    for planned, kind in zip(tensors, kinds):
        byte_shape = gguf.quants.quant_shape_to_byte_shape(planned.shape, kind)
        writer.add_tensor_info(planned.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=kind)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for planned, kind in zip(tensors, kinds):
            data = planned.make()
            if not planned.raw:
                data = gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), kind)
            if tuple(data.shape[:-1]) != tuple(planned.shape[:-1]):
                raise LorachatError(f"GGUF export: {planned.name} has shape {tuple(data.shape)}, "
                                    f"not the {planned.shape} planned")
            writer.write_tensor_data(data)
        writer.fout[0].flush()
        os.fsync(writer.fout[0].fileno())
    finally:
        writer.close()


def copy_metadata(reader, writer) -> None:
    """Every key of `reader`'s file (a gguf.GGUFReader) into `writer`, with its own value type, but
    the ones the writer sets (architecture, alignment) or the tensors decide (file type)."""
    import gguf

    array = gguf.GGUFValueType.ARRAY
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in _OWN_KEYS:
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == array and len(field.types) > 1 else None
        if kind == array and sub == array:      # nested arrays: no llama-family key has one
            raise LorachatError(f"GGUF export: the source's key {key} is an array of arrays, which is not copied")
        writer.add_key_value(key, field.contents(), kind, sub)


def source_tensors(reader) -> list:
    """(name, numpy shape, ggml type name, reader tensor) of a source file's tensors, in its order."""
    return [(t.name, tuple(int(d) for d in reversed(t.shape)), t.tensor_type.name, t) for t in reader.tensors]


def read(path: Path):
    """A gguf.GGUFReader over `path` (memory-mapped: nothing is read until asked for)."""
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise LorachatError(f"cannot read {path} as GGUF: {exc}") from None
