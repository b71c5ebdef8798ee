"""Training on several processes with PyTorch's own engine, DistributedDataParallel.

    torchrun --nproc_per_node=2 -m mmtutor train --out gan.pt      # 2 CPU processes (gloo)
    torchrun --nproc_per_node=8 -m mmtutor train --out gan.pt      # 8 GPUs (NCCL)

``torchrun`` starts one process per worker and sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; ``init()`` joins the process group (gloo on CPUs, NCCL on CUDA GPUs). Every
rank draws the *same* global batch from the same seeded generator and keeps its own
contiguous share of it (``shard``), so the ranks see disjoint, seed-determined parts of every
batch and together exactly the batch a single process would see. DDP averages the gradients,
so every rank takes the same optimiser step; rank 0 writes checkpoints (and the EMA it keeps
is identical on every rank). Nothing here is home-made but the sharding.

Batch norm must see the whole global batch too, or each rank would normalise with its own
share's statistics and drift away from a single-process run: ``wrap`` converts batch-norm
layers to ``torch.nn.SyncBatchNorm`` on GPUs and, on CPUs (where PyTorch's SyncBatchNorm does
not run), to ``CPUSyncBatchNorm``, which all-reduces the batch sums with
``torch.distributed.nn.functional.all_reduce`` (differentiable, so gradients flow through the
shared statistics exactly as in one process). With that, 2 processes reproduce a
single-process run of the same global batch up to floating-point summation order
(tests/test_distributed.py states the tolerance).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def launched() -> bool:
    """Was this process started by torchrun (or another launcher that sets WORLD_SIZE > 1)?"""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device | None = None) -> Context:
    """Join the process group torchrun set up (once per process); a 1-process context otherwise."""
    if not launched():
        return Context()
    if not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return current()


def current() -> Context:
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def device_for(ctx: Context, prefer: torch.device) -> torch.device:
    """One GPU per process (cuda:LOCAL_RANK) when training on GPUs; the CPU otherwise."""
    if prefer.type == "cuda" and ctx.active:
        return torch.device("cuda", ctx.local_rank)
    return prefer


def local_batch(global_batch: int, ctx: Context, multiple: int = 1) -> int:
    """Each rank's share of the global batch; it must divide evenly (and by ``multiple``)."""
    if global_batch % (ctx.world_size * multiple):
        raise ValueError(f"a global batch of {global_batch} does not split into {ctx.world_size} equal shares "
                         f"that are multiples of {multiple}; choose a batch size divisible by "
                         f"{ctx.world_size * multiple}")
    return global_batch // ctx.world_size


def shard(x, ctx: Context):
    """This rank's contiguous share of a global batch (a tensor, or a list)."""
    if not ctx.active:
        return x
    n = len(x) // ctx.world_size
    return x[ctx.rank * n:(ctx.rank + 1) * n]


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the *global* batch of all processes, for CPUs (gloo): the per-channel sum
    and sum of squares of every rank's share are all-reduced before normalising."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce
        dims = [0] + list(range(2, x.ndim))                              # every axis but the channels
        shape = [1, -1] + [1] * (x.ndim - 2)
        x = x.float()          # statistics in fp32, as batch norm under bf16 autocast computes them
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))   # (2C + 1,)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c:2 * c] / n - mean * mean                           # biased, as batch norm uses
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_((var * n / (n - 1)).detach(), m)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Replace every batch-norm layer of ``module`` (in place) by this class, same weights."""
        for name, child in module.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, cls):
                new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
                new.load_state_dict(child.state_dict())
                setattr(module, name, new.to(next(child.buffers()).device))
            else:
                cls.convert(child)
        return module


def wrap(module: nn.Module, ctx: Context) -> nn.Module:
    """DistributedDataParallel around ``module`` when running on several processes, with batch
    norm synchronised across them (``module``'s own layers are converted in place)."""
    if not ctx.active:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP
    dev = next(module.parameters()).device
    if dev.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    else:
        CPUSyncBatchNorm.convert(module)
    return DDP(module, device_ids=[dev] if dev.type == "cuda" else None)


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["Context", "init", "current", "launched", "device_for", "local_batch", "shard", "wrap", "barrier",
           "shutdown", "CPUSyncBatchNorm"]
