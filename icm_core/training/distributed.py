"""Multi-process training under ``torchrun``: process group, data split, synchronized BN.

The same code runs single-process (world size 1: every helper is a no-op). Under
``torchrun --nproc_per_node=N``, each process takes 1/N of every global batch, gradients are
averaged by ``DistributedDataParallel``, and batch-norm statistics are computed over the
global batch, so N processes follow the single-process run (up to float rounding).
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup(device: str) -> tuple[str, int, int]:
    """Join the process group torchrun describes; returns (device, rank, world size)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return device, 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    rank, size = world()
    return device, rank, size


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def gather(obj) -> list:
    """Every process's ``obj`` (picklable: CPU tensors, plain values), in rank order; every
    process must call it. ``[obj]`` outside torchrun."""
    size = world()[1]
    if size == 1:
        return [obj]
    out = [None] * size
    dist.all_gather_object(out, obj)
    return out


def mean_over_processes(value: float) -> float:
    """The global mean of a per-process scalar (for logging the global loss)."""
    if world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / world()[1]


class CrossProcessBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the batch of every process.

    torch's ``SyncBatchNorm`` does this on GPUs only; this version all-reduces the per-channel
    sum, sum of squares and count with the autograd-aware ``torch.distributed.nn`` collective,
    so it also runs on CPU with the gloo backend (and is used there).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world()[1] > 1):
            return super().forward(x)


        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype)
        stats = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), count])
        with warnings.catch_warnings():  # its suggested successor has no backward: keep this one
            warnings.simplefilter("ignore", FutureWarning)
            stats = all_reduce(stats)  # differentiable: gradients flow through the global statistics
        C = x.shape[1]
        n = stats[-1]
        mean = stats[:C] / n
        var = stats[C:2 * C] / n - mean * mean
        with torch.no_grad():
            self.num_batches_tracked += 1
            # momentum None means a cumulative average, as in nn.BatchNorm2d
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / max(float(n) - 1, 1.0))
        y = (x - mean.view(1, C, 1, 1)) / torch.sqrt(var.view(1, C, 1, 1) + self.eps)
        return y * self.weight.view(1, C, 1, 1) + self.bias.view(1, C, 1, 1)


def convert_batchnorm(module: nn.Module, device: str) -> nn.Module:
    """Swap every BatchNorm2d for a cross-process one (torch's SyncBatchNorm on CUDA)."""
    if world()[1] == 1:
        return module
    if device.startswith("cuda"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = CrossProcessBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.requires_grad_(child.weight.requires_grad)
            setattr(module, name, new)
        else:
            convert_batchnorm(child, device)
    return module
