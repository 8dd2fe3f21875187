"""Whether a converted model folder still holds the bytes it was written with.

A converted folder (models/converted.py) is loaded at every start, and damage to it (a file cut
short or emptied by a full disk, bytes overwritten, a file removed by hand) would otherwise load
silently and answer empty strings, or fail deep inside safetensors or transformers. So when a
folder is written, every file's size and CRC-32 is recorded (`record`), and every start reads all
of every file's bytes against that record (`damage`) before the folder is loaded.

CRC-32 rather than sha256, because the check is for accidental damage: it misses no burst of
errors up to 32 bits and one other change in about 4 billion, and costs half of sha256 (smol's
538 MB: 0.2 s against 0.4 s on 2 CPU cores, in a start of about 4.5 s; the bytes read are then in
the page cache for the load that follows). Where the weights came from is the source's sha256.

Knows nothing about GGUF, transformers or where folders are kept.
"""
import re
import zlib
from pathlib import Path

KEY = "checksums"     # lorachat-source.json's field: {file name: "SIZE:CRC32"}
_SUM = re.compile(r"^(\d+):[0-9a-f]{8}$")
_CHUNK = 1 << 22


def record(folder: Path, keeper: str) -> dict:
    """{file name: "SIZE:CRC32"} of every file in `folder` but `keeper`, the file that holds the record."""
    return {path.name: _sum(path) for path in sorted(Path(folder).iterdir()) if path.is_file() and path.name != keeper}


def damage(folder: Path, recorded) -> str | None:
    """None when every file `recorded` is in `folder` with the bytes it was written with; else what
    is wrong, as the end of a sentence about the folder ('is damaged: ...'). Sizes are compared
    first (no reading), then every byte."""
    folder = Path(folder)
    if not isinstance(recorded, dict) or not recorded or not all(_SUM.match(str(v)) for v in recorded.values()):
        return "has no record of what was written into it (an older lorachat made it, or its record is damaged)"
    for name, expected in sorted(recorded.items()):
        try:
            size = (folder / name).stat().st_size
        except OSError:
            return f"is damaged: {name} is missing"
        if str(size) != expected.split(":")[0]:
            return f"is damaged: {name} is {size:,} bytes, not the {int(expected.split(':')[0]):,} written"
    for name, expected in sorted(recorded.items()):
        try:
            found = _sum(folder / name)
        except OSError as exc:
            return f"is damaged: {name} cannot be read ({exc.strerror or exc})"
        if found != expected:
            return f"is damaged: {name} does not hold the bytes written (CRC-32 {found.split(':')[1]}, not {expected.split(':')[1]})"
    return None


def _sum(path: Path) -> str:
    crc, size, buffer = 0, 0, bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            crc = zlib.crc32(view[:count], crc)
            size += count
    return f"{size}:{crc:08x}"
