"""The processes of one training run, through accelerate: one process in the REPL, N under
`accelerate launch` or `torchrun` (DDP over NCCL on GPUs, gloo on CPUs, FSDP from an accelerate
config). accelerate owns the device, the process group, the data sharding, mixed precision, the
no-sync of accumulated passes and the collectives; this module only says which of them training
needs. Knows nothing about recall, adapters or files.
"""
import contextlib
import os

from lorachat.errors import LorachatError


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


class Ranks:
    """One training run's Accelerator: `prepare` the model, optimizer and batches; `backward`,
    `clip`, sums and maxima across ranks; `finish` gives the plain model back."""

    def __init__(self, model, cpu: bool):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState
        from accelerate.utils import DistributedType

        if not launched():  # a REPL trains again and again in one process, maybe in another precision
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
        precision = None if os.environ.get("ACCELERATE_MIXED_PRECISION") else _precision(model)
        try:
            self.accelerator = Accelerator(cpu=cpu, mixed_precision=precision, device_placement=False)
        except RuntimeError as exc:  # e.g. an FSDP config on a machine without GPUs
            raise LorachatError(f"accelerate cannot start this run: {' '.join(str(exc).split())[:300]}") from None
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.fsdp = self.accelerator.distributed_type == DistributedType.FSDP
        self.plain = model
        self.wrapped = model

    def prepare(self, model, optimizer, loader):
        if self.fsdp:  # PEFT's own policy: each LoRA layer and each transformer block its own FSDP unit
            from peft.utils.other import fsdp_auto_wrap_policy

            self.accelerator.state.fsdp_plugin.auto_wrap_policy = fsdp_auto_wrap_policy(model)
        self.wrapped, optimizer, loader = self.accelerator.prepare(model, optimizer, loader)
        return self.wrapped, optimizer, loader

    @contextlib.contextmanager
    def accumulating(self, last: bool):
        """Passes of one optimizer step: gradients are synchronised across ranks on the last only."""
        if last or self.world == 1:
            yield
        else:
            with self.accelerator.no_sync(self.wrapped):
                yield

    def autocast(self):
        return self.accelerator.autocast()

    def backward(self, loss) -> None:
        self.accelerator.backward(loss)

    def clip(self, params, max_norm: float) -> None:
        self.accelerator.clip_grad_norm_(params, max_norm)

    def sum(self, values: list[float]) -> list[float]:
        return self._reduce(values, "sum")

    def max(self, values: list[float]) -> list[float]:
        return self._reduce(values, "max")

    def _reduce(self, values, how):
        if self.world == 1:
            return list(values)
        import torch

        tensor = torch.tensor(values, dtype=torch.float64 if self.accelerator.device.type == "cpu" else torch.float32,
                              device=self.accelerator.device)
        return self.accelerator.reduce(tensor, reduction=how).tolist()

    def shard(self, indices) -> list:
        """This rank's share of `indices` for work that needs no lockstep (checks on the plain
        model). Under FSDP every forward is collective: every rank takes every index."""
        return list(indices) if self.fsdp else list(indices)[self.rank::self.world]

    def checking_model(self):
        """What recall checks run on: the plain model (no collectives), or under FSDP the wrapped one."""
        return self.wrapped if self.fsdp else self.plain

    def full_state_dict(self):
        """Under FSDP, the full (gathered) state dict for the main process to save; None otherwise."""
        return self.accelerator.get_state_dict(self.wrapped) if self.fsdp else None

    def finish(self):
        """The plain model back: no DDP wrapper, no autocast around its forward."""
        model = self.accelerator.unwrap_model(self.wrapped, keep_fp32_wrapper=False)
        model.__dict__.pop("_is_accelerate_prepared", None)
        self.accelerator.free_memory()
        self.wrapped = self.plain
        return model


def _precision(model) -> str:
    """accelerate's mixed precision for this base: its own half precision on a GPU, else none
    (the LoRA weights are fp32, under autocast to the base's dtype)."""
    import torch

    param = next(model.parameters())
    base = next((p.dtype for p in model.parameters() if not p.requires_grad), param.dtype)
    if param.device.type == "cuda":
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(base, "no")
    return "no"
