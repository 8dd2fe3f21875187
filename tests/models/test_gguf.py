"""GGUF files as users have them: found by their magic bytes whatever their name (upper case, an
Ollama blob), and refused in one line, before converting, when the header lies about the tensors."""
import shutil

import pytest

from lorachat.core.errors import LorachatError
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
