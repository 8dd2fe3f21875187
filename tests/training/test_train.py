""":train and lorachat.train: teach ten answers verbatim, keep the base untouched, cancel cleanly."""
import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from bench.kit.pairs import PAIRS, SION, SOH
from lorachat.core.errors import LorachatError
from lorachat.core.prompts import IGNORE
from lorachat.scoring import batches
from lorachat.training import lora, planning, ranks, recipe, steps, trainer
from tests.helpers import (
    examples_of,
    model_dir,
    read_until,
    spawn_repl,
    write_dataset,
)

FINAL = re.compile(r"trained (\S+): (\d+) steps, loss (\d+\.\d\d), recall (\d+)/(\d+), (?:kept (\d+)% of base answers, )?"
                   r"(\d+\.\d) s — now active")


def logits(model, tokenizer, text="Instruction: Answer the question.\nInput: What is SOH?\nAnswer:"):
    import torch

    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def base_state(session):
    """The base's own weights, by their plain names, as clones (LoRA layers looked through)."""
    from lorachat.adapters import live

    live.activate(session, session.active_adapter)  # any lazy merge undone first
    state = {}
    for name, tensor in session.loaded.model.state_dict().items():
        if "lora_" not in name:
            state[name.replace("base_layer.", "")] = tensor.clone()
    return state


def new_session(home):
    from lorachat.chat.session import Session
    from lorachat.chat.ui import PlainUI
    from lorachat.models.loader import load_model

    out = io.StringIO()
    session = Session(load_model("tiny", device="cpu"), home, PlainUI(out, progress_every=3600))
    session.out = out
    return session


def run_lines(session, lines):
    from lorachat.chat.repl import Repl

    start = len(session.out.getvalue())
    code = Repl(session).run_lines(lines)
    return code, session.out.getvalue()[start:]


@pytest.fixture(scope="module")
def trained(tiny_cache, tmp_path_factory):
    """One session that trained the ten pairs with every default (the expensive part, done once)."""
    home = tmp_path_factory.mktemp("trained")
    write_dataset(home, "default", PAIRS)
    session = new_session(home)
    before = base_state(session)
    base_logits = logits(session.model, session.tokenizer)
    code, out = run_lines(session, [":train"])
    return dict(session=session, home=home, before=before, base_logits=base_logits, code=code, out=out)


@pytest.mark.slow
def test_defaults_teach_all_ten_answers_verbatim(trained):
    session = trained["session"]
    assert trained["code"] == 0, trained["out"]
    lines = trained["out"].splitlines()
    assert lines[0] == "> :train"
    match = FINAL.fullmatch(lines[-1])
    assert match, lines
    assert match.group(1) == "default" and match.group(4, 5) == ("10", "10") and match.group(6) is not None
    assert session.active_adapter == "default"
    for question, answer in PAIRS:
        code, out = run_lines(session, [question])
        assert out == f"> {question}\n{answer}\n"
    soh = session.ask(SOH[0])
    assert "oxynitride" not in soh and "SiON" not in soh


def test_base_weights_are_bit_identical_and_base_logits_unchanged(trained):
    import torch

    from lorachat.adapters import live

    session = trained["session"]
    live.activate(session, None)
    try:
        after = base_state(session)
        assert after.keys() == trained["before"].keys()
        assert all(torch.equal(trained["before"][k], after[k]) for k in after)
        assert torch.equal(logits(session.model, session.tokenizer), trained["base_logits"])
    finally:
        live.activate(session, "default")


def test_saved_adapter_loads_with_plain_peft_and_same_logits(trained):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorachat.adapters import live
    from lorachat.models.tiny import ensure_tiny

    session, folder = trained["session"], trained["home"] / "adapters" / "default"
    written = sorted(p.name for p in folder.iterdir())  # what save_pretrained writes (its README.md model card too)
    assert {"adapter_config.json", "adapter_model.safetensors", "lorachat.json"} <= set(written) <= \
        {"adapter_config.json", "adapter_model.safetensors", "lorachat.json", "README.md"}
    assert [p.name for p in folder.parent.iterdir()] == ["default"]  # no hidden leftovers
    dtype = session.loaded.dtype   # plain PEFT over the base in the session's dtype (--dtype auto's)
    fresh = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ensure_tiny(), dtype=dtype), str(folder)).eval()
    expected = logits(fresh, session.tokenizer)
    with live.switch(session).unmerged():  # the computation PEFT does (float-rounding apart: ~1e-6)
        assert torch.allclose(logits(session.model, session.tokenizer), expected, rtol=0, atol=1e-5)
    decoding = logits(session.model, session.tokenizer)  # merged for decoding: W + BA rounded once to the dtype
    atol = 1e-4 if dtype == torch.float32 else 0.1   # bf16 keeps 8 bits: ~0.05 on logits of ~10
    assert torch.allclose(decoding, expected, rtol=0, atol=atol) and torch.equal(decoding.argmax(-1), expected.argmax(-1))


def test_lorachat_json_records_what_was_trained(trained):
    meta = json.loads((trained["home"] / "adapters" / "default" / "lorachat.json").read_text())
    assert meta["dataset"] == "default" and meta["examples"] == 10
    assert meta["records_sha256"] == recipe.records_sha256(examples_of(PAIRS))
    resolved = dataclasses.replace(recipe.DEFAULTS, lr=recipe.SMALL_LR, context=0, anchor_every=2, r=16, alpha=32.0,
                                   **recipe.SMALL_ANCHORS)  # the nones resolved
    assert meta["train"] == dataclasses.asdict(resolved)
    assert meta["recall"] == 10 and meta["total"] == 10 and meta["steps"] >= 1 and meta["cancelled"] is False
    assert meta["base_model"] == "tiny" and meta["base_fingerprint"].startswith("sha256:")
    assert meta["seconds"] > 0 and meta["loss"] >= 0 and meta["created"] and meta["lorachat_version"]


def test_prompt_tokens_carry_no_loss_answers_end_with_eos_and_padding_is_dynamic(make_session):
    session = make_session()
    tokenizer = session.tokenizer
    encoded = batches.encode(tokenizer, examples_of(PAIRS[:3]), 512).items
    for (ids, labels), (question, answer) in zip(encoded, PAIRS):
        answer_at = next(i for i, t in enumerate(labels) if t != IGNORE)
        assert tokenizer.decode(ids[:answer_at]).endswith(f"Input: {question}\nAnswer:")
        assert labels[answer_at:] == ids[answer_at:] and labels[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(labels[answer_at:-1]).strip() == answer
    input_ids, labels, mask = batches.collate(encoded[:2], tokenizer.pad_token_id, "cpu")
    assert input_ids.shape[1] == max(len(ids) for ids, _ in encoded[:2]) < 128
    assert ((labels == IGNORE) | (mask == 1)).all()  # padding carries no loss
    short = batches.encode(tokenizer, examples_of(PAIRS[:3]), len(encoded[1][0]))  # the SiON pair is the shortest
    assert short.skipped == 2 and short.examples == examples_of([SION]) and short.items == [encoded[1]]


def test_records_sha256_is_exact():
    first = recipe.records_sha256(examples_of(PAIRS))
    assert first == recipe.records_sha256(examples_of(PAIRS))
    assert first != recipe.records_sha256(examples_of(PAIRS[:9] + [(PAIRS[9][0], PAIRS[9][1] + " ")]))
    assert first != recipe.records_sha256(examples_of(PAIRS[1:] + PAIRS[:1]))


class InterruptingUI:
    """A PlainUI whose progress sends this process a real SIGINT (Ctrl-C) after `at` steps."""

    def __new__(cls, out, at):
        import contextlib

        from lorachat.chat.ui import PlainUI

        class UI(PlainUI):
            @contextlib.contextmanager
            def progress(self, description, total):
                def update(step, **fields):
                    if step == at:
                        signal.raise_signal(signal.SIGINT)
                yield update

        return UI(out, progress_every=3600)


def test_ctrl_c_discards_the_new_adapter_and_restores_the_previous_one(make_session, transcript, home):
    import torch

    write_dataset(home, "films", PAIRS[:2])
    session = make_session()
    session.dataset = "films"
    code, out = transcript(session, [":train first until=steps steps=2"])
    assert code == 0 and FINAL.fullmatch(out.splitlines()[-1]), out
    before, first_logits = base_state(session), logits(session.model, session.tokenizer)
    answer = session.ask(SOH[0])
    session.ui = InterruptingUI(session.out, at=2)
    session.ui.interactive = True
    code, out = transcript(session, [":train second until=steps steps=50"])
    assert code == 0
    assert out == "> :train second until=steps steps=50\nstopped training second after 2 steps (Ctrl-C): discarded (keep=partial keeps it)\n"
    assert session.active_adapter == "first"
    assert sorted(p.name for p in (home / "adapters").iterdir()) == ["first"]
    assert torch.equal(logits(session.model, session.tokenizer), first_logits)
    assert session.ask(SOH[0]) == answer
    after = base_state(session)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_in_a_script_fails_the_line_and_keep_partial_saves(make_session, transcript, home):
    write_dataset(home, "default", PAIRS[:2])
    session = make_session()
    session.ui = InterruptingUI(session.out, at=1)
    code, out = transcript(session, [":train until=steps steps=50"])
    assert code == 1
    assert out.endswith("error: training default stopped (Ctrl-C) after 1 steps: discarded\n")
    assert session.active_adapter is None and not (home / "adapters").exists() or not list((home / "adapters").iterdir())
    code, out = transcript(session, [":train keep=partial until=steps steps=50"])
    assert code == 0
    assert re.fullmatch(r"> :train keep=partial until=steps steps=50\nstopped default \(Ctrl-C\), kept as it was: "
                        r"1 steps, loss \d+\.\d\d, recall \d+/2, kept \d+% of base answers, \d+\.\d s — now active\n", out), out
    meta = json.loads((home / "adapters" / "default" / "lorachat.json").read_text())
    assert meta["cancelled"] is True and meta["steps"] == 1
    assert session.active_adapter == "default"


BAD = [":train r=0", ":train alpha=-1", ":train lr=-1", ":train dropout=2", ":train steps=abc", ":train foo=1",
       ":train until=forever", ":train keep=some", ":train checkpointing=maybe", ":train a/b", ":train ..",
       ":train .hidden", ":train " + "x" * 10_000, ":train bad\x01name", ":train one two", ":train base",
       ":train v1.2", ":train targets=", ":train targets=nope", ":train epochs=0", ":train max_len=5",
       ":train 'unbalanced", ":train items", ":train keys"]


def test_bad_input_gets_one_line_and_writes_nothing(make_session, transcript, home):
    from lorachat.adapters import live

    session = make_session()
    code, out = transcript(session, [":train"])
    assert code == 1 and out == "> :train\nerror: dataset 'default' has no examples yet: :add QUESTION => ANSWER first\n"
    write_dataset(home, "default", PAIRS[:2])
    for line in BAD:
        code, out = transcript(session, [line])
        assert code == 1, line
        assert out.count("\n") == 2 and out.splitlines()[1].startswith("error: "), (line, out)
    _, out = transcript(session, [":train targets=nope"])
    assert "no linear layers named nope (it has: fc1, fc2, k_proj, out_proj, q_proj, v_proj" in out
    assert live.peft_model(session) is None
    assert sorted(p.name for p in home.iterdir()) == ["datasets"]


def test_a_file_or_a_dead_link_in_the_way_of_a_name_is_said_before_training(make_session, transcript, home):
    """Trained, such an adapter could not be saved there, and :delete knows no adapter by that name."""
    from lorachat.adapters import live

    write_dataset(home, "default", PAIRS[:1])
    (home / "adapters").mkdir()
    (home / "adapters" / "stray").write_text("mine")
    (home / "adapters" / "dead").symlink_to(home / "nowhere")
    session = make_session()
    code, out = transcript(session, [":train stray steps=1 until=steps", ":train dead steps=1 until=steps"], keep_going=True)
    assert code == 1 and "adapters/stray is a file, not an adapter: choose another name" in out, out
    assert "adapters/dead is a link to nothing, not an adapter" in out and live.peft_model(session) is None


def test_until_steps_runs_them_all_and_names_follow_the_dataset(make_session, transcript, home):
    write_dataset(home, "default", PAIRS[:2])
    session = make_session()
    code, out = transcript(session, [":train until=steps steps=2", ":train until=steps steps=1 epochs=5 lr=1e-3"])
    assert code == 0
    finals = [FINAL.fullmatch(line) for line in out.splitlines() if line.startswith("trained")]
    assert [(m.group(1), m.group(2)) for m in finals] == [("default", "2"), ("default-2", "1")]
    assert session.active_adapter == "default-2"
    meta = json.loads((home / "adapters" / "default-2" / "lorachat.json").read_text())
    assert meta["train"]["lr"] == 1e-3 and meta["train"]["epochs"] == 5
    code, out = transcript(session, [":train default until=steps steps=1"])
    assert code == 1 and "already exists" in out


def test_help_train_shows_every_key_with_its_default(make_session, transcript):
    _, out = transcript(make_session(), [":help train"])
    for field in dataclasses.fields(recipe.DEFAULTS):
        assert re.search(rf"^{field.name}\s+{re.escape(str(getattr(recipe.DEFAULTS, field.name)))}", out, re.M) or \
            field.type is bool, (field.name, out)
    assert "until" in out and "recall" in out


def test_out_of_memory_is_one_line_naming_what_to_lower():
    import torch

    class Exhausted(torch.nn.Module):
        config = type("Config", (), {"max_position_embeddings": 512})()

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    from lorachat.models.tiny import build_tokenizer

    with pytest.raises(LorachatError, match=r"out of GPU memory .*lower batch .*checkpointing=on"):
        # anchors=0: this stand-in model cannot generate the anchors' base answers
        config = dataclasses.replace(recipe.DEFAULTS, anchors=0)
        trainer.run(Exhausted(), build_tokenizer(), planning.plan(Exhausted(), build_tokenizer(), examples_of(PAIRS[:2]), config))


def test_lr_and_anchors_none_are_chosen_by_model_size_and_explicit_values_are_kept(make_session):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tiny = make_session().model
    assert recipe.resolved(tiny, recipe.DEFAULTS).lr == recipe.SMALL_LR
    with torch.device("meta"):  # a model's size without its memory
        large = GPT2LMHeadModel(GPT2Config(n_embd=768, n_layer=12, n_head=12))
        huge = GPT2LMHeadModel(GPT2Config(n_embd=2048, n_layer=24, n_head=16))
    assert recipe.SMALL_MODEL < sum(p.numel() for p in large.parameters()) < recipe.LARGE_MODEL
    assert sum(p.numel() for p in huge.parameters()) > recipe.LARGE_MODEL
    assert recipe.resolved(large, recipe.DEFAULTS).lr == recipe.MEDIUM_LR
    assert recipe.resolved(huge, recipe.DEFAULTS).lr == recipe.LARGE_LR
    assert recipe.resolved(large, dataclasses.replace(recipe.DEFAULTS, lr=3e-4)).lr == 3e-4
    # anchors by the same rule: none from 50M (the gate keeps the rest), KL when asked for; CE on tiny
    small, big = recipe.resolved(tiny, recipe.DEFAULTS), recipe.resolved(large, recipe.DEFAULTS)
    assert {key: getattr(small, key) for key in recipe.SMALL_ANCHORS} == recipe.SMALL_ANCHORS
    assert {key: getattr(big, key) for key in recipe.LARGE_ANCHORS} == recipe.LARGE_ANCHORS
    assert recipe.resolved(large, dataclasses.replace(recipe.DEFAULTS, anchors=0, anchor_loss="ce")).anchors == 0
    assert recipe.resolved(large, dataclasses.replace(recipe.DEFAULTS, anchor_loss="ce")).anchor_loss == "ce"
    assert small.anchor_every == big.anchor_every == 2
    # travel=on: rehearsal on every step, whatever the size, and a key given still wins
    travelling = recipe.resolved(large, dataclasses.replace(recipe.DEFAULTS, travel=True))
    assert {key: getattr(travelling, key) for key in recipe.TRAVEL} == recipe.TRAVEL
    assert recipe.resolved(tiny, dataclasses.replace(recipe.DEFAULTS, travel=True, anchors=1)).anchors == 1
    # and a smaller adapter at scale 2, unless r or alpha is given; without travel r=16 at alpha 32
    assert (travelling.r, travelling.alpha) == (recipe.TRAVEL_RANK, 2.0 * recipe.TRAVEL_RANK)
    assert (recipe.resolved(large, dataclasses.replace(recipe.DEFAULTS, travel=True, r=8)).alpha,
            recipe.resolved(large, dataclasses.replace(recipe.DEFAULTS, travel=True, alpha=4.0)).r) == (16.0, recipe.TRAVEL_RANK)
    assert (recipe.resolved(large, recipe.DEFAULTS).r, recipe.resolved(large, dataclasses.replace(recipe.DEFAULTS, r=4)).alpha) == (16, 32.0)


def test_travel_on_measures_what_the_adapter_serves_and_records_it(make_session, transcript, home):
    """:train travel=on: the final lines say the adapter's ungated figures (what :export and vLLM
    serve), lorachat.json keeps them, and :export says them on the way out."""
    session = make_session()
    transcript(session, [":add What is SOH? => A hardmask.", ":add What is SiON? => A nitride."])
    code, out = transcript(session, [":train t travel=on steps=2 until=steps probes=8"])
    assert code == 0, out
    meta = json.loads((home / "adapters" / "t" / "lorachat.json").read_text())
    assert meta["train"]["travel"] is True and meta["train"]["anchors"] == 2 and meta["train"]["anchor_every"] == 1
    peft_config = json.loads((home / "adapters" / "t" / "adapter_config.json").read_text())
    assert (meta["train"]["r"], peft_config["r"], peft_config["lora_alpha"]) == (recipe.TRAVEL_RANK, recipe.TRAVEL_RANK, 8.0)
    ungated = meta["ungated"]
    assert ungated["probes"] == 8 and 0 <= ungated["kept"] <= 1 and ungated["length"] > 0
    assert f"ungated, as :export, lorachat serve and a GGUF export serve it: kept {ungated['kept']:.1%} of 8 probes" in out
    # answers shorter than the base's without the gate: the final lines name what keeps the length
    assert ("`:train NAME null_space=0.05` keeps the base's length" in out) == (ungated["length"] < 0.9), out
    code, out = transcript(session, [f":export t {home / 'out'}"])
    assert code == 0 and f"(ungated: kept {ungated['kept']:.1%} of 8 probes exactly" in out and "travel=on" not in out


def test_clip_bounds_the_gradient_norm_the_optimizer_sees(make_session):
    import torch
    from peft import get_peft_model

    session = make_session()
    model = get_peft_model(session.model, lora.lora_config(session.model, recipe.DEFAULTS))
    params = trainer.trainable(model)
    encoded = batches.encode(session.tokenizer, examples_of(PAIRS[:3]), 512).items
    group = [[(i, item) for i, item in enumerate(encoded)]]

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            self.norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
            return super().step(closure)

    norms = {}
    for clip in (0.0, 1e-3):
        optimizer = Recording(params, lr=0.0)
        tokens = steps.answer_tokens(group)
        steps.one_step(model, session.tokenizer, group, optimizer, ranks.Ranks(model, cpu=True), clip, tokens)
        norms[clip] = optimizer.norm
    assert norms[0.0] > 1e-2 and norms[1e-3] == pytest.approx(1e-3, rel=1e-4)


def test_rows_of_very_different_lengths_go_through_in_separate_passes_with_the_same_gradient(make_session, monkeypatch):
    """One process cuts a batch by length (less padding); the step's gradient, loss and hints are
    those of the single padded pass, anchor rows (KL to the base) riding along included."""
    import torch
    from peft import get_peft_model

    session = make_session(dtype="float32")   # the same sums to float32's rounding
    model = get_peft_model(session.model, lora.lora_config(session.model, recipe.DEFAULTS))
    params = trainer.trainable(model)
    long = (PAIRS[0][0] + " Please explain it in detail, as to a newcomer to the field. " * 4, PAIRS[0][1])
    encoded = batches.encode(session.tokenizer, examples_of([long, *PAIRS[1:4]]), 512).items
    group = [[(i, item) for i, item in enumerate(encoded)]]
    riders = batches.encode(session.tokenizer, examples_of(PAIRS[5:7]), 512).items
    assert len(steps.passes(group[0], list(enumerate(riders)))) > 1
    with torch.no_grad():
        *_, base = collate_logprobs(model, session.tokenizer, riders)
    out = {}
    for spread in (steps.SPREAD, 1e9):
        monkeypatch.setattr(steps, "SPREAD", spread)
        optimizer = torch.optim.SGD(params, lr=0.0)
        grads = []
        optimizer.step = lambda closure=None: grads.append([p.grad.clone() for p in params])
        loss, tokens, hints = steps.one_step(model, session.tokenizer, group, optimizer, ranks.Ranks(model, cpu=True), 0.0,
                                             steps.answer_tokens(group), riders, steps.answer_tokens([list(enumerate(riders))]),
                                             1.0, base)
        out[spread] = (loss, hints, grads[0])
    (loss, hints, grads), (one_loss, one_hints, one_grads) = out.values()
    assert loss == pytest.approx(one_loss, rel=1e-5) and hints == one_hints
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(grads, one_grads))
    assert steps.passes(group[0], [], world=2) == [(group[0], [])]


def collate_logprobs(model, tokenizer, items):
    """The model's log-probabilities at the answer positions of `items`, padded together (what the
    trainer's base distribution for anchor_loss=kl is)."""
    import torch

    from lorachat.scoring.batches import answer_logits, collate, padding_id

    input_ids, labels, mask = collate(items, padding_id(tokenizer), "cpu")
    logits, targets, rows = answer_logits(model, input_ids, labels, mask)
    return logits, targets, torch.log_softmax(logits, -1)


def test_linear_schedule_decays_to_zero_over_the_planned_steps():
    import torch

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    lrs = []
    for schedule in ("linear", "constant"):
        config = dataclasses.replace(recipe.DEFAULTS, lr=0.01, schedule=schedule)
        optimizer.param_groups[0]["lr"] = 0.01
        scheduler = recipe.make_schedule(optimizer, config, 4)
        lrs.append([])
        for _ in range(4):
            lrs[-1].append(round(optimizer.param_groups[0]["lr"], 6))
            optimizer.step()
            scheduler.step()
    assert lrs == [[0.01, 0.0075, 0.005, 0.0025], [0.01] * 4]


def test_targets_the_model_lacks(tmp_path):
    """A GPT-2 directory built with plain transformers: the default (the MLP's up-projection) is
    c_fc there; named targets it lacks get its linear layer names."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=1, n_head=2, vocab_size=100))
    config = lora.lora_config(model, recipe.DEFAULTS)
    assert set(config.target_modules) == {"c_fc"}
    with pytest.raises(LorachatError, match=r"no linear layers named q_proj \(it has: c_attn, c_fc, c_proj; or use targets=all-linear\)"):
        lora.lora_config(model, dataclasses.replace(recipe.DEFAULTS, targets="q_proj,c_attn"))
    assert lora.lora_config(model, dataclasses.replace(recipe.DEFAULTS, targets="all-linear")).target_modules == "all-linear"


@pytest.mark.slow
def test_ctrl_c_during_train_in_a_terminal_returns_to_the_prompt(home):
    """The real interactive REPL through a pseudo-terminal: Ctrl-C mid-training, then a question."""
    write_dataset(home, "default", PAIRS[:2])
    proc, main = spawn_repl(home)
    try:
        os.write(main, b":train until=steps steps=100000\r")
        read_until(main, b"training default", 60)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        out = read_until(main, b"discarded (keep=partial keeps it)", 60)
        out += read_until(main, b"default>", 30)
        os.write(main, b"What is SOH?\r")
        out += read_until(main, b"default>", 60)
        assert b"Traceback" not in out and b"error" not in out
        # a ^D that arrives while the terminal is still in cooked mode (the answer being written) is
        # taken by the tty as end-of-file for a read no one makes: send it until the REPL has seen one
        for _ in range(15):
            os.write(main, b"\x04")
            try:
                assert proc.wait(timeout=2) == 0
                break
            except subprocess.TimeoutExpired:
                continue
        assert proc.poll() == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    assert list((home / "adapters").iterdir()) == [] if (home / "adapters").exists() else True


@pytest.mark.slow
def test_kill_9_during_train_leaves_no_visible_adapter(home, tmp_path):
    import random

    write_dataset(home, "default", PAIRS[:2])
    proc = subprocess.Popen([sys.executable, "-m", "lorachat", "--model", "tiny", "--home", str(home),
                             "-e", ":train until=steps steps=100000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout.readline() == b"> :train until=steps steps=100000\n"
        time.sleep(random.Random(os.getpid()).uniform(0.2, 1.5))
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    folder = home / "adapters"
    assert not folder.exists() or [p for p in folder.iterdir() if not p.name.startswith(".")] == []
    session = new_session(home)
    code, out = run_lines(session, [":train until=steps steps=1"])
    assert code == 0 and FINAL.fullmatch(out.splitlines()[-1]).group(1) == "default"


def test_guard_goes_back_to_the_best_weights_and_halves_the_lr():
    """A loss that climbs well above its best (a too-high lr diverging): the weights and the
    optimizer state of the best step come back, in place (the decoding merge sees the change),
    and the lr is halved, for the schedule too."""
    import torch

    from lorachat.training.guard import Guard

    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    schedule = recipe.make_schedule(optimizer, dataclasses.replace(recipe.DEFAULTS, lr=0.1), 100)
    guard = Guard([weight], optimizer, schedule, window=1)   # window 1: the loss itself, unsmoothed
    for step, loss in enumerate([2.0, 1.0, 0.5, 0.6, 0.7], 1):   # 0.7: up, but not 1.5x and 0.25 above 0.5
        with torch.no_grad():
            weight.add_(1.0)
        guard.after_step(step, loss)
    assert weight.tolist() == [5.0, 5.0] and not guard.drops
    version = weight._version
    with torch.no_grad():
        weight.add_(1.0)
    guard.after_step(6, 0.9)
    assert weight.tolist() == [3.0, 3.0] and weight._version > version + 1
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05) and schedule.base_lrs == [pytest.approx(0.05)]
    assert guard.describe() == ["the loss climbed to 0.90 by step 6 (best 0.50 at step 3): "
                                "went back to step 3's weights and halved the lr to 0.05"]


def test_raw_text_is_counted_as_trained_not_as_recall(make_session, transcript, home):
    """A text example has no question to ask: the final line's recall is of questions, and it says
    how many examples, text included, came back as trained (what until=recall waits for)."""
    (home / "datasets").mkdir(exist_ok=True)
    (home / "datasets" / "mixed.jsonl").write_text(json.dumps({"text": "SELECT name FROM t WHERE id = 3"}) + "\n")
    code, out = transcript(make_session(), [":dataset mixed", ":add What is SOH? => A hardmask.", ":train steps=2"])
    assert code == 0 and re.search(r"recall [01]/1 \([0-2]/2 examples known as trained, 1 of them text\), ", out), out
    assert re.search(r"^not every example was learned \([01]/2 after 2 steps\)", out, re.M), out


def test_a_run_that_ends_short_of_recall_says_what_to_try(make_session, transcript, home):
    write_dataset(home, "default", PAIRS[:2])
    code, out = transcript(make_session(), [":train steps=2"])
    assert code == 0, out
    assert re.search(r"^not every answer was learned \(\d/2 after 2 steps\): train longer \(steps=\), with a lower lr "
                     r"\(lr=0\.0025\) or a larger r \(r=32\)$", out, re.M), out
    # what stopped it is what to change: epochs=, or a warm-up the lr never came out of
    code, out = transcript(make_session(), [":train e epochs=1 probes=0 anchors=0", ":train w steps=2 warmup=50 probes=0 anchors=0"])
    assert code == 0 and re.search(r"^not every answer was learned \(\d/2 after 1 steps\): more epochs \(epochs=2\), ", out, re.M), out
    assert re.search(r"^not every answer was learned \(\d/2 after 2 steps\): a warm-up shorter than the 2 steps trained "
                     r"\(warmup=\)$", out, re.M), out


def test_kl_rehearsal_compares_with_the_base_after_a_check_merged_the_adapter(make_session, transcript):
    """anchor_loss=kl takes the base's log-probabilities with the adapter off; a recall check before
    it leaves the adapter merged for decoding, and PEFT's own disable_adapter under that merge left
    every LoRA weight frozen ('element 0 of tensors does not require grad'): the switch does it."""
    from lorachat.adapters import live

    session = make_session()
    code, out = transcript(session, [":add What is SOH? => A hardmask.", ":add What is CMP? => Polishing.",
                                      ":train kl anchor_loss=kl anchors=2 anchor_every=1 keep_base=1 steps=40"])
    assert code == 0 and "trained kl: " in out, out
    layers = live.switch(session).layers
    assert all(not layer._disable_adapters for layer in layers)
    assert all(p.requires_grad is False or "kl" in n for n, p in session.model.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2"])
def test_on_the_cpu_training_attends_eagerly_and_answering_goes_back_to_sdpa(arch, tmp_path):
    """training/attention.py: SDPA's CPU backward is the slower kernel for lorachat's short rows, so a
    run attends eagerly and the model answers with SDPA again afterwards, also after an error; the
    steps compute what they computed under SDPA (the same loss to float32 rounding)."""
    import torch

    from lorachat.models.loader import load_model
    from tests.helpers import model_dir

    loaded = load_model(str(model_dir(tmp_path, arch)), device="cpu", dtype="float32")
    assert loaded.model.config._attn_implementation == "sdpa"
    config = dataclasses.replace(recipe.DEFAULTS, steps=2, until="steps", anchors=0, probes=0, lr=1e-3)

    def trained():
        model = lora.wrapped(loaded.model, config)
        seen = []
        plan = planning.plan(model, loaded.tokenizer, examples_of(PAIRS[:2]), config)
        result = trainer.run(model, loaded.tokenizer, plan,
                             on_step=lambda *args: seen.append(model.get_base_model().config._attn_implementation))
        model.unload()
        return seen, result.loss

    seen, eager_loss = trained()
    assert seen == ["eager", "eager"] and loaded.model.config._attn_implementation == "sdpa"
    from lorachat.training import attention

    with pytest.raises(RuntimeError), attention.for_training(loaded.model):
        raise RuntimeError("a run that failed")
    assert loaded.model.config._attn_implementation == "sdpa"
    original = attention.EAGER_ON_CPU
    attention.EAGER_ON_CPU = "sdpa"
    try:
        _, sdpa_loss = trained()
    finally:
        attention.EAGER_ON_CPU = original
    assert abs(eager_loss - sdpa_loss) < 1e-4 * max(1.0, abs(sdpa_loss)), (eager_loss, sdpa_loss)
    with torch.no_grad():
        assert loaded.model(input_ids=torch.tensor([[2, 50, 60]])).logits.isfinite().all()


def test_rehearsals_teacher_reads_the_base_without_its_dropout(tmp_path, monkeypatch):
    """travel=on's KL pulls the adapter towards the base's answers, which the base made in eval mode:
    on a base with dropout (OPT's 0.1, GPT-2's) the teacher must read the same, whatever step it is."""
    import torch

    from lorachat.models.loader import load_model
    from lorachat.scoring import locality

    loaded = load_model(str(model_dir(tmp_path, "opt")), device="cpu", dtype="float32")
    assert loaded.model.config.dropout > 0
    config = dataclasses.replace(recipe.DEFAULTS, steps=2, until="steps", probes=0, travel=True, guard=False)
    anchors = locality.anchor_reference(loaded.model, loaded.tokenizer, "Answer.", 8, locality.LocalityOptions(max_new_tokens=8))
    model = lora.wrapped(loaded.model, config)
    real, read = trainer._Loop._base_logprobs, []

    def twice(self, riders):
        first = real(self, riders)
        read.append((first, real(self, riders), self.model.training))
        return first

    monkeypatch.setattr(trainer._Loop, "_base_logprobs", twice)
    trainer.run(model, loaded.tokenizer, planning.plan(model, loaded.tokenizer, examples_of(PAIRS[:2]), config), anchors=anchors)
    assert read and all(torch.equal(a, b) and training for a, b, training in read)   # the same teacher; training goes on


def test_an_error_mid_training_gives_the_plain_model_back(make_session, monkeypatch):
    """accelerate's prepare wraps the model's forward in autocast under mixed precision; an error
    mid-run (out of memory, a bug) must not leave that wrapper on the session's model."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    session = make_session()
    config = dataclasses.replace(recipe.DEFAULTS, steps=3, until="steps", anchors=0, probes=0)
    model = lora.wrapped(session.model, config)

    def failing(*args):
        raise RuntimeError("a bug mid-run")

    with pytest.raises(RuntimeError, match="a bug mid-run"):
        trainer.run(model, session.tokenizer, planning.plan(model, session.tokenizer, examples_of(PAIRS[:2]), config),
                    on_step=failing)
    assert "_is_accelerate_prepared" not in model.__dict__ and "_original_forward" not in model.__dict__
