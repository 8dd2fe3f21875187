"""Which dtype a base is loaded in: what `--dtype` asks for, or under `auto` what this machine
computes fastest without losing what lorachat promises (bench/RESULTS.md, "bf16 on the CPU").

- a GPU: bfloat16 where it has it, else float16 (as before);
- a CPU that computes bf16 natively (Intel AMX-BF16 or AVX512-BF16, Arm BF16; torch's oneDNN kernels
  use them): bfloat16 weights. Training keeps the LoRA matrices and their optimizer state in float32
  (training/trainer.py `trainable`; PEFT's own adapter dtype), so only the frozen base is rounded.
  Measured on SmolLM2-135M (a Xeon with AMX, 1 thread): a training step 1.6x faster than float32 and
  1.3x faster than float32 under bf16 autocast (which converts every frozen weight on every pass);
  greedy answers 2.4x faster; half the memory;
- any other CPU: float32. Emulated bf16 is slower than float32 there, never chosen.

Knows nothing about models beyond the device: the caller loads in the dtype chosen.
"""
from dataclasses import dataclass
from pathlib import Path

NAMES = ("auto", "float32", "float16", "bfloat16")
# /proc/cpuinfo flags of bf16 arithmetic units (x86: AMX tiles, AVX-512 BF16; Arm: FEAT_BF16)
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
X86_UNITS = ("amx_bf16", "avx512_bf16")
X86 = ("x86_64", "amd64", "i386", "i686")


@dataclass(frozen=True)
class Precision:
    """The dtype a base runs in, and why, in words `:info` shows."""
    dtype: object     # torch dtype
    why: str


@dataclass(frozen=True)
class Native:
    """Whether this CPU computes bf16 natively, as torch's oneDNN sees it, and the flags that say so."""
    bf16: bool
    flags: tuple = ()


def cpu_bf16(cpuinfo: str | None = None, machine: str | None = None, onednn: bool | None = None) -> Native:
    """torch's own check (oneDNN: the bf16 kernels it would run) and the cpuinfo flags behind it.
    Flags without oneDNN's yes do not count: torch would emulate them. On x86 oneDNN's yes is not
    enough either: it says yes on every AVX-512 core (Skylake-SP to Ice Lake), where it emulates bf16
    with integer instructions, so x86 also needs AMX-BF16 or AVX512-BF16 in /proc/cpuinfo; where that
    cannot be read (macOS, Windows on x86) the answer is no, and float32 runs."""
    import platform

    import torch

    if onednn is None:
        try:
            onednn = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):   # a torch built without oneDNN
            onednn = False
    flags = _flags(cpuinfo)
    machine = (machine or platform.machine()).lower()
    if machine in X86:
        onednn = onednn and any(flag in flags for flag in X86_UNITS)
    return Native(onednn, flags)


def _flags(cpuinfo: str | None) -> tuple:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:   # not Linux: oneDNN's answer alone
            return ()
    words = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            words.update(line.split(":", 1)[-1].split())
    return tuple(flag for flag in BF16_FLAGS if flag in words)


def choose(dtype: str, device: str, native: Native | None = None) -> Precision:
    """The dtype for `--dtype dtype` on `device` ("cpu" or "cuda"); `native` is this CPU's bf16
    support (default: asked of torch and /proc/cpuinfo)."""
    import torch

    named = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype != "auto":
        return Precision(named[dtype], f"--dtype {dtype}")
    if device == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, "auto: this GPU computes bf16")
        return Precision(torch.float16, "auto: this GPU has no bf16, float16 instead")
    native = cpu_bf16() if native is None else native
    if native.bf16:
        units = ", ".join(native.flags) or "oneDNN"
        return Precision(torch.bfloat16, f"auto: this CPU computes bf16 natively ({units}), LoRA weights in float32; "
                                         "--dtype float32 for full precision")
    return Precision(torch.float32, "auto: this CPU has no native bf16 (it would be slower than float32)")
