"""torch.distributed helpers for the trainers: process group, prompt sharding, collectives, DDP.

What it decides:

* Launch: ``torchrun`` (env ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` / ``MASTER_PORT``;
  multi-node through torchrun's rendezvous). One process per device; the backend is ``nccl`` on CUDA,
  else ``gloo``. The device defaults to ``cuda:LOCAL_RANK`` when CUDA is available (made current with
  ``torch.cuda.set_device``), else the CPU.
* A plain ``python`` run (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``) creates no process group, and every helper
  here is then a no-op (``shard`` returns everything, collectives return their input, ``wrap_ddp`` the
  module itself), so the trainers have a single code path.
* Sharding: prompts are split in contiguous blocks, one per rank, so a GRPO group (the G samples of one
  prompt, rows p*G .. p*G+G-1) never crosses ranks and group-relative advantages stay rank-local. The
  prompt count must be a multiple of the world size (no uneven last block: every rank runs the same
  number of micro-batches, so DDP's collectives stay matched).
* Update: DistributedDataParallel. DDP *averages* gradients over ranks, while the GRPO loss is already
  normalised by the *global* masked-token count (``all_reduce_sum`` of the local counts), so the
  trainer multiplies its local loss by ``world_size``: the sum of the local losses is then the
  one-process loss of the global batch, and so are the averaged gradients. Gradient accumulation wraps
  every micro-batch but the last in ``no_sync``.
* The policy loss needs the hidden states and the LM head weight, not the logits: ``HiddenStates`` makes
  ``model.hidden_states`` the module's forward so DDP sees the policy's forward; the loss reads the head
  weight through ``.model.lm_head_weight`` (DDP's reducer hooks every parameter, so that gradient is
  averaged too, even though it is produced outside ``forward``).
* FSDP2 (``fully_shard``) is not used yet: the world models here are up to a few hundred M parameters,
  whose weights, gradients and AdamW state replicate comfortably on every device, and DDP keeps the
  fused GRPO loss's direct access to the full head weight simple. Larger language models would need it
  (sharded parameters and optimizer state).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "DistInfo", "HiddenStates", "all_gather_cat", "all_reduce_mean", "all_reduce_sum", "barrier",
    "broadcast_object", "init", "no_sync", "shard", "shutdown", "unwrap", "wrap_ddp",
]

_CPU = torch.device("cpu")
_CREATED_GROUP = False  # whether init() created the default process group (shutdown destroys only that one)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (defaults: a single CPU process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = _CPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def _resolve_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def init(device: str | torch.device | None = None, backend: str | None = None) -> DistInfo:
    """Read the torchrun environment, create the process group when WORLD_SIZE > 1, pick the device.

    A process group that already exists (e.g. created by a test) is used as is: its rank and size win
    over the environment. Bad environment values raise a ValueError naming the variable and the value.
    """
    global _CREATED_GROUP
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world_size < 1:
        raise ValueError(f"environment variable WORLD_SIZE must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"environment variable RANK must be in [0, WORLD_SIZE={world_size}), got {rank}")
    initialised = dist.is_available() and dist.is_initialized()
    if initialised:
        rank, world_size = dist.get_rank(), dist.get_world_size()
    default_local = rank % max(torch.cuda.device_count(), 1) if torch.cuda.is_available() else 0
    local_rank = _env_int("LOCAL_RANK", default_local)
    if local_rank < 0:
        raise ValueError(f"environment variable LOCAL_RANK must be >= 0, got {local_rank}")
    dev = _resolve_device(device, local_rank)
    if world_size > 1 and not initialised:
        if not dist.is_available():
            raise RuntimeError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed")
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        kwargs = {"device_id": dev} if dev.type == "cuda" and backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
        _CREATED_GROUP = True
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown() -> None:
    """Destroy the process group if ``init`` created it (a group made by someone else is left alone)."""
    global _CREATED_GROUP
    if _CREATED_GROUP and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CREATED_GROUP = False


def shard(num_prompts: int, info: DistInfo, *, name: str = "grpo.prompts_per_step") -> slice:
    """This rank's contiguous block of prompts: ``slice(rank * k, (rank + 1) * k)``, k = num_prompts / world.

    ``name`` is the config field the count came from, for the error message.
    """
    if not isinstance(num_prompts, int) or isinstance(num_prompts, bool) or num_prompts < 1:
        raise ValueError(f"{name} must be a positive int, got {num_prompts!r}")
    if num_prompts % info.world_size:
        raise ValueError(f"{name}={num_prompts} must be a multiple of the world size {info.world_size}")
    per_rank = num_prompts // info.world_size
    return slice(info.rank * per_rank, (info.rank + 1) * per_rank)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over ranks, in place; returns ``t`` (unchanged on a single process)."""
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Mean over ranks of scalar metrics (for logging), in one collective.

    Every rank must pass the same keys in the same order.
    """
    if not info.distributed or not values:
        return {k: float(v) for k, v in values.items()}
    packed = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=info.device)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return {k: v / info.world_size for k, v in zip(values, packed.tolist())}


def all_gather_cat(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Same-shape tensors of every rank concatenated along dim 0, in rank order (``t`` on one process)."""
    if not info.distributed:
        return t
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(parts, t)
    return torch.cat(parts, dim=0)


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """``src``'s picklable ``obj`` on every rank (``obj`` itself on one process)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=info.device if info.device.type == "cuda" else None)
    return box[0]


def barrier(info: DistInfo) -> None:
    """Wait for every rank (nothing on one process)."""
    if not info.distributed:
        return
    if info.device.type == "cuda" and dist.get_backend() == "nccl":
        dist.barrier(device_ids=[info.device.index])
    else:
        dist.barrier()


def wrap_ddp(module: nn.Module, info: DistInfo) -> nn.Module:
    """``DistributedDataParallel(module)`` when distributed (rank 0's weights are broadcast), else ``module``."""
    if not info.distributed:
        return module
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def no_sync(module: nn.Module, enabled: bool):
    """``module.no_sync()`` (skip the gradient all-reduce: accumulate) for an enabled DDP module, else a no-op."""
    if enabled and isinstance(module, DistributedDataParallel):
        return module.no_sync()
    return contextlib.nullcontext()


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper, else the module itself."""
    return module.module if isinstance(module, DistributedDataParallel) else module


class HiddenStates(nn.Module):
    """Wraps a Transformer so that DDP sees the policy's forward: forward(input_ids) -> model.hidden_states(input_ids).

    The LM head weight is read through ``.model.lm_head_weight`` by the loss (DDP's reducer still averages
    its gradient: it hooks every parameter).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.model.hidden_states(input_ids, **kwargs)  # [B, S, H]
