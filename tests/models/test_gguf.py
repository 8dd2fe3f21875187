"""GGUF files as users have them: found by their magic bytes whatever their name (upper case, an
Ollama blob), refused in one line, before converting, when the header lies about the tensors; and
their conversions in the cache, made again once when damaged."""
import json
import shutil

import pytest

from lorachat.core.errors import LorachatError
from lorachat.models import converted
from lorachat.models.loader import load_files
from tests.helpers import write_gguf


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.mark.parametrize("name", ["TINY.GGUF", "sha256-6a0746a1ec1aef3e7ec53868f220ff6e389f6f8ef87a01d77c96807de94ca2aa"])
def test_a_gguf_file_is_known_by_its_magic_whatever_its_name(gguf_file, tmp_path, name):
    renamed = shutil.copy(gguf_file, tmp_path / name)
    tokenizer, config, folder = load_files(str(renamed), progress=lambda line: None)
    assert config.model_type == "llama" and config.num_hidden_layers == 2 and tokenizer.chat_template


@pytest.mark.parametrize("name", ["notes.txt", "model.bin", "NOT-A.GGUF"])
def test_a_file_that_is_not_gguf_is_one_line_naming_it(tmp_path, name):
    other = tmp_path / name
    other.write_bytes(b"plain text, not a model\n")
    with pytest.raises(LorachatError) as refused:
        load_files(str(other))
    assert f"cannot load model '{other}': {other} is not a GGUF file (it does not start with the bytes 'GGUF')" in str(refused.value)


@pytest.mark.parametrize("says, line", [
    ({"embedding_length": 48}, "tiny-llama.gguf: llama.embedding_length is 48, but its tensors are 64 wide "
                               "(token_embd.weight: 64 x 999)"),
    ({"block_count": 1}, "tiny-llama.gguf: llama.block_count is 1, but the file holds 2 layers (blk.0 to blk.1)"),
    ({"block_count": 3}, "tiny-llama.gguf: llama.block_count is 3, but the file holds 2 layers (blk.0 to blk.1)"),
])
def test_a_header_that_lies_about_the_tensors_is_one_line_before_converting(tmp_path, says, line):
    lying = write_gguf(tmp_path / "tiny-llama.gguf", says=says)
    with pytest.raises(LorachatError) as refused:
        load_files(str(lying), progress=lambda line: pytest.fail(f"converting: {line}"))
    assert str(refused.value).startswith(line), refused.value


@pytest.fixture(scope="module")
def conversion(gguf_file, tmp_path_factory):
    """The tiny GGUF file converted once, into a cache of its own: the folder (copied, then damaged, by tests)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORACHAT_CACHE", str(tmp_path_factory.mktemp("cache")))
        return converted.ensure_gguf(gguf_file, progress=lambda line: None)


def cut(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:len(data) // 2])


def overwrite(folder, at: int):
    with open(folder / "model.safetensors", "r+b") as weights:   # same size, other bytes: a flipped block on disk
        weights.seek(at)
        block = weights.read(64)
        weights.seek(at)
        weights.write(bytes(b ^ 0x5A for b in block))


def unrecorded(folder):
    source = json.loads((folder / converted.SOURCE_FILE).read_text())
    del source["checksums"]
    (folder / converted.SOURCE_FILE).write_text(json.dumps(source))


DAMAGE = {
    "cut short": (cut, "is damaged: model.safetensors is {half:,} bytes, not the {size:,} written"),
    "emptied": (lambda f: (f / "model.safetensors").write_bytes(b""), "is damaged: model.safetensors is 0 bytes, not the {size:,} written"),
    "garbled": (lambda f: overwrite(f, 0), "is damaged: model.safetensors does not hold the bytes written (CRC-32 "),
    "overwritten": (lambda f: overwrite(f, 500_000), "is damaged: model.safetensors does not hold the bytes written (CRC-32 "),
    "without config.json": (lambda f: (f / "config.json").unlink(), "is damaged: config.json is missing"),
    "older": (unrecorded, "has no record of what was written into it (an older lorachat made it"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_conversion_is_made_again_from_its_source_once(conversion, gguf_file, tmp_path, monkeypatch, damage):
    cache = tmp_path / "cache"
    folder = cache / conversion.name
    shutil.copytree(conversion, folder)
    size = (folder / "model.safetensors").stat().st_size
    harm, says = DAMAGE[damage]
    harm(folder)
    monkeypatch.setenv("LORACHAT_CACHE", str(cache))
    said = []
    load_files(str(gguf_file), progress=said.append)
    assert said[0].startswith(f"tiny-llama.gguf: {folder} {says.format(half=size // 2, size=size)}"), said
    assert said[0].endswith(": converting it again") and said[-1].startswith("tiny-llama.gguf: ready in")
    assert sorted(p.name for p in cache.iterdir()) == [folder.name, "gguf-index.json"]   # nothing hidden left behind
    for name in ("model.safetensors", "config.json"):   # the conversion is exact: the same bytes again
        assert (folder / name).read_bytes() == (conversion / name).read_bytes()
    said.clear()
    load_files(str(gguf_file), progress=said.append)
    assert said == []                                   # sound now: loaded as it is
