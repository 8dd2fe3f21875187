"""Launch facts: which process of how many this is, as the launcher (`torchrun`, `accelerate
launch`) set them in the environment, and a barrier between them. One process (the REPL) is rank 0
of 1; and whether a failure is a peer gone. Knows nothing about models or training; training/ranks.py
builds a run's Accelerator on these.
"""
import os


def sharded() -> bool:
    """Whether the launcher asked for FSDP (`accelerate launch` with an FSDP config)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def world() -> int:
    """Processes in this run, as the launcher (torchrun, accelerate launch) set them: 1 when not launched."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    """Whether this process is one rank of a launcher's group (torchrun, accelerate launch)."""
    return world() > 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def peer_lost(exc: BaseException) -> bool:
    """Whether `exc` is a collective of a launched run failing because another rank is gone (killed,
    crashed): NCCL raises torch's DistError (DistBackendError), gloo a plain RuntimeError from its
    transport ("[.../gloo/transport/tcp/pair.cc] Connection closed by peer")."""
    if not launched():
        return False
    import torch.distributed as dist

    return isinstance(exc, getattr(dist, "DistError", ())) or isinstance(exc, RuntimeError) and "/gloo/" in str(exc)


def barrier() -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if launched():
        from accelerate import PartialState

        PartialState().wait_for_everyone()
