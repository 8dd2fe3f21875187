"""The dtype a base runs in: --dtype auto by this CPU's bf16 support, --dtype overriding it, :info saying
which and why, training in bf16 keeping the LoRA weights in float32, and the output layer's input."""
import json

import pytest
import torch

from lorachat.models import precision

NATIVE = precision.Native(True, ("amx_bf16", "avx512_bf16"))
EMULATED = precision.Native(False, ())


def test_auto_is_bf16_only_where_the_cpu_computes_it_and_dtype_overrides_it():
    chosen = precision.choose("auto", "cpu", NATIVE)
    assert chosen.dtype == torch.bfloat16 and "natively (amx_bf16, avx512_bf16)" in chosen.why
    assert "--dtype float32" in chosen.why   # how to get full precision back
    plain = precision.choose("auto", "cpu", EMULATED)
    assert plain.dtype == torch.float32 and "no native bf16" in plain.why
    # an explicit --dtype wins either way, and says so
    assert precision.choose("float32", "cpu", NATIVE) == precision.Precision(torch.float32, "--dtype float32")
    assert precision.choose("bfloat16", "cpu", EMULATED) == precision.Precision(torch.bfloat16, "--dtype bfloat16")


@pytest.mark.parametrize("cpuinfo, flags", [
    ("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n", ("amx_bf16", "avx512_bf16")),
    ("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n", ("bf16",)),
    ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n", ()),
])
def test_the_cpuinfo_flags_behind_the_choice(cpuinfo, flags):
    assert precision.cpu_bf16(cpuinfo).flags == flags


CASCADE_LAKE = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512vl avx512_vnni\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize("cpuinfo, machine, onednn, native", [
    (CASCADE_LAKE, "x86_64", True, False),    # AVX-512 without bf16 units: oneDNN says yes, and emulates
    (SAPPHIRE_RAPIDS, "x86_64", True, True),
    (SAPPHIRE_RAPIDS, "x86_64", False, False),
    ("", "AMD64", True, False),               # flags unknown on x86: float32, never slower
    (GRAVITON3, "aarch64", True, True),       # Arm: oneDNN's own check is by the bf16 feature
    (GRAVITON3, "aarch64", False, False),
])
def test_native_bf16_needs_the_units_not_only_onednns_yes(cpuinfo, machine, onednn, native):
    found = precision.cpu_bf16(cpuinfo, machine=machine, onednn=onednn)
    assert found.bf16 is native
    assert (precision.choose("auto", "cpu", found).dtype == torch.bfloat16) is native


def test_info_says_what_runs_and_why(make_session, transcript):
    session = make_session(dtype="float32")
    line = next(l for l in transcript(session, [":info"])[1].splitlines() if l.startswith("dtype"))
    assert line.split(None, 1)[1] == "float32 (--dtype float32)"
    auto = make_session()
    line = next(l for l in transcript(auto, [":info"])[1].splitlines() if l.startswith("dtype"))
    expected = precision.choose("auto", "cpu")
    assert next(auto.loaded.model.parameters()).dtype == expected.dtype
    assert line.split(None, 1)[1] == f"{str(expected.dtype).removeprefix('torch.')} ({expected.why})"


def test_training_a_bf16_base_keeps_the_lora_weights_float32(make_session, transcript):
    session = make_session(dtype="bfloat16")
    code, out = transcript(session, [":add What is SOH? => Spin-on hardmask.", ":train soh steps=2 until=steps probes=0"])
    assert code == 0 and "trained soh: 2 steps" in out
    dtypes = {}
    for name, p in session.model.named_parameters():
        dtypes.setdefault("lora" if ".lora_" in name else "base", set()).add(p.dtype)
    assert dtypes == {"lora": {torch.float32}, "base": {torch.bfloat16}}
    from safetensors import safe_open

    with safe_open(str(session.home / "adapters" / "soh" / "adapter_model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}   # the file loads into any dtype's base
    assert json.loads((session.home / "adapters" / "soh" / "lorachat.json").read_text())["steps"] == 2


@pytest.mark.parametrize("rows", [4, 1])
def test_a_frozen_bf16_base_reads_the_last_positions_without_copying_its_vocabulary(rows):
    """torch's matmul broadcasts a frozen weight over a (rows, 1, hidden) slice of the last positions
    and bf16 copies it (16 GB for OPT-2.7B's 64-question gate background; at one row, every answer's
    first token: 11% of a short answer's time there); loader.contiguous_head avoids it. One row's slice
    counts as contiguous, so the hook goes by its strides."""
    from torch.profiler import ProfilerActivity, profile

    from lorachat.models.loader import load_model

    loaded = load_model("tiny", device="cpu", dtype="bfloat16")
    model = loaded.model
    ids = torch.randint(4, 400, (rows, 9), generator=torch.Generator().manual_seed(0))
    vocab = model.get_output_embeddings().weight.shape[0]
    with torch.no_grad():
        expected = model(input_ids=ids, logits_to_keep=1).logits
        model.requires_grad_(False)   # as PEFT leaves the base
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            frozen = model(input_ids=ids, logits_to_keep=1).logits
    assert torch.equal(frozen, expected)
    events = prof.key_averages(group_by_input_shape=True)
    assert "aten::bmm" not in {event.key for event in events}
    copied = [e.input_shapes for e in events if e.key == "aten::copy_" and any(vocab in shape for shape in e.input_shapes)]
    assert not copied, copied   # the head's weight, broadcast and copied
