"""Synchronized batch statistics across processes (torch.distributed), as nn.SyncBatchNorm does.

Forward: every rank all-gathers the (count, mean, biased variance) of its local batch and merges
them with Chan's parallel formula, so ranks may hold different batch sizes (even none). Backward:
the [C] sums of dxhat and dxhat * xhat are all-reduced. Any backend's tensors work with any
process-group backend that supports their device (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import torch


def check_group(group, *, op: str) -> None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"fastgan.{op}: process_group was given but torch.distributed is not "
                           "initialised (call torch.distributed.init_process_group first)")
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"fastgan.{op}: process_group must be a torch.distributed.ProcessGroup "
                        f"(e.g. torch.distributed.group.WORLD), got {type(group).__name__}")


def merge_stats(mean: torch.Tensor, var: torch.Tensor, count: int,
                group) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The global per-channel mean and biased variance of all ranks' batches, and their count."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    local = torch.cat((mean.new_full((1,), float(count)), mean, var))
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local, group=group)
    table = torch.stack(gathered).double()  # [world, 1 + 2C]; float64 keeps huge counts exact
    c = mean.shape[0]
    counts, means, variances = table[:, :1], table[:, 1:1 + c], table[:, 1 + c:]
    total = counts.sum()
    if total == 0:
        return mean, var, 0
    global_mean = (counts * means).sum(0) / total
    m2 = (counts * (variances + (means - global_mean) ** 2)).sum(0)
    return global_mean.to(mean.dtype), (m2 / total).to(var.dtype), int(total.item())


def all_reduce_sum(t: torch.Tensor, group) -> torch.Tensor:
    """t summed over the ranks of ``group`` (a new tensor; t is left as it was)."""
    import torch.distributed as dist

    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out
