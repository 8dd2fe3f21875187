"""use_switch_*, adapter_load_ms, adapter_file_mb, rss_per_adapter_mb: adapters on disk and in memory.

The trained adapter is saved once and copied on disk under other names (the copies are real PEFT
adapters with lorachat.json, identical weights), then loaded with `:use` one by one: each first
`:use` is a load from disk. Switch times are `:use` between two loaded adapters, with 2 and with 50
in memory. Knows nothing about training.
"""
import gc
import os
import shutil
import statistics
import time

from bench.kit.workspace import command

SAFETENSORS = "adapter_model.safetensors"
MIB = 1 << 20


def figures(session, adapter: str, loaded: int, switches: int) -> dict:
    """`loaded`: how many adapters are in memory for the second switch figure (50 in the issue)."""
    from lorachat.adapters import disk, paths

    path = paths.adapter_path(session, adapter)
    if not path.exists():
        disk.save(session, adapter, {"bench": True})
    copies = [f"{adapter}-copy{i:02d}" for i in range(1, loaded)]
    for name in copies:
        shutil.copytree(path, paths.adapter_path(session, name))
    command(session, f":set max_loaded={loaded + 4}")
    load_ms = [_ms(session, copies[0])]
    two = [_ms(session, name) for _ in range(switches) for name in (adapter, copies[0])]
    rss, gpu = _resident(), _gpu_allocated()
    load_ms += [_ms(session, name) for name in copies[1:]]
    rss_added, gpu_added = (_resident() - rss) / (len(copies) - 1), (_gpu_allocated() - gpu) / (len(copies) - 1)
    many = [_ms(session, name) for _ in range(switches) for name in (adapter, copies[0])]
    file_mb = (path / SAFETENSORS).stat().st_size / MIB
    out = dict(use_switch_ms_p50=round(statistics.median(two), 3), use_switch_ms_p50_50=round(statistics.median(many), 3),
               use_switch_loaded=loaded, adapter_load_ms=round(statistics.median(load_ms), 2),
               adapter_load_ms_max=round(max(load_ms), 2), adapter_file_mb=round(file_mb, 3),
               rss_per_adapter_mb=round(rss_added / MIB, 3))
    if session.loaded.device == "cuda":
        out["gpu_mem_per_adapter_mb"] = round(gpu_added / MIB, 3)
    return out


def _ms(session, name: str) -> float:
    start = time.perf_counter()
    command(session, f":use {name}")
    return (time.perf_counter() - start) * 1000


def _resident() -> int:
    """Resident set size in bytes, after a collection (freed tensors count as freed)."""
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _gpu_allocated() -> int:
    import torch

    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
