"""Data-parallel training with PyTorch's own engine: ``DistributedDataParallel``.

One process per replica (``torch.multiprocessing`` spawn, the ``gloo`` process
group on CPU, ``nccl`` on one GPU per rank), each holding the whole model and
its shard of every global batch (contiguous slices, rank 0 first). DDP
all-reduces the gradients in its backward hooks and divides them by the world
size: each rank's loss is its shard's mean, so the averaged gradient is the
gradient of the global batch's mean loss, and ``torch.optim.SGD`` steps every
replica the same way.

BatchNorm, the part that makes data parallelism not the same network:

- ``sync_bn=False``: every rank normalises with its own shard's statistics, and
  DDP (``broadcast_buffers=True``, its default) copies rank 0's running
  statistics to every rank before each forward, so the model ends with rank
  0's: replica 0's chain of updates.
- ``sync_bn=True``: the statistics of the global batch. With NCCL (a GPU per
  rank) this is ``nn.SyncBatchNorm.convert_sync_batchnorm``. PyTorch 2.13's
  ``SyncBatchNorm`` refuses CPU tensors in its forward ("SyncBatchNorm expected
  input tensor to be on GPU or XPU"), so on CPU (and for ranks sharing a GPU
  over gloo) :class:`AllReduceBatchNorm2d` does what it does with a
  differentiable sum all-reduce (its backward all-reduces the gradient of the
  statistics, as SyncBatchNorm's backward does; PyTorch's own
  ``torch.distributed.nn.functional.all_reduce`` is deprecated in 2.13): the
  sum, then the sum of squared deviations from the global mean (two passes,
  like the single-device kernel), and the running statistics updated with the
  global mean and unbiased variance.

:func:`data_parallel_steps` runs K steps and returns the losses (the mean of
the replicas' losses), and rank 0's final canonical parameters and running
statistics.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..distributed import check_batches
from ..reference_dp import split_batch
from ..spec import DenseNetSpec
from .convert import export_canonical, load_canonical
from .runtime import _empty

__all__ = ["AllReduceBatchNorm2d", "convert_allreduce_batchnorm", "data_parallel_steps",
           "data_parallel_runs"]


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks, differentiable: the gradient of a sum all-reduce is the sum
    all-reduce of the gradients (every rank's loss depends on every rank's input)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> torch.Tensor:
        dx = dy.clone()
        dist.all_reduce(dx)
        return dx


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(x)


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose train-mode statistics are those of the whole global
    batch, gathered with differentiable all-reduces over the default process group:
    ``nn.SyncBatchNorm`` for CPU tensors (the gloo group), where PyTorch's refuses them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        dist.all_reduce(count)  # the global number of values per channel
        mean = all_reduce(x.sum(dim=(0, 2, 3))) / count
        centred = x - mean[None, :, None, None]
        var = all_reduce((centred * centred).sum(dim=(0, 2, 3))) / count  # biased
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean, alpha=m)
            self.running_var.mul_(1 - m).add_(var * (count / (count - 1)), alpha=m)
            self.num_batches_tracked.add_(1)
        scale = self.weight * torch.rsqrt(var + self.eps)
        return centred * scale[None, :, None, None] + self.bias[None, :, None, None]


def convert_allreduce_batchnorm(module: nn.Module) -> nn.Module:
    """Every ``BatchNorm2d`` of ``module`` -> :class:`AllReduceBatchNorm2d` with the same
    parameters and buffers (the CPU twin of ``nn.SyncBatchNorm.convert_sync_batchnorm``)."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, AllReduceBatchNorm2d):
        new = AllReduceBatchNorm2d(module.num_features, module.eps, module.momentum,
                                   module.affine, module.track_running_stats,
                                   device=module.weight.device, dtype=module.weight.dtype)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_allreduce_batchnorm(child))
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_device(device: str, rank: int) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda":
        # one GPU per rank when there are enough; otherwise the ranks share them
        return torch.device("cuda", rank % torch.cuda.device_count())
    return dev


def _process_group_backend(device: str, world: int) -> str:
    if torch.device(device).type == "cuda" and torch.cuda.device_count() >= world:
        return "nccl"
    return "gloo"  # CPU; and several ranks on one GPU (NCCL needs a GPU per rank)


def _replica(rank: int, world: int, port: int, spec_dict: dict[str, Any],
             params: Mapping[str, np.ndarray], batches: Sequence[tuple[np.ndarray, np.ndarray]],
             modes: Sequence[bool], lr: float, momentum: float, dtype: str, device: str,
             result_path: str) -> None:
    """One rank: the DDP training loop over its shards, once per BatchNorm mode in
    ``modes`` (one process group for all: starting the processes is the slow part);
    rank 0 writes the results."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)  # one core per replica
    dist.init_process_group(_process_group_backend(device, world), rank=rank, world_size=world)
    try:
        dev = _rank_device(device, rank)
        spec = DenseNetSpec.from_dict(spec_dict)
        results = [_train(spec, params, batches, sync_bn, lr, momentum, dtype, dev, rank, world)
                   for sync_bn in modes]
        if rank == 0:
            with open(result_path, "wb") as f:
                pickle.dump(results, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _train(spec: DenseNetSpec, params: Mapping[str, np.ndarray],
           batches: Sequence[tuple[np.ndarray, np.ndarray]], sync_bn: bool, lr: float,
           momentum: float, dtype: str, dev: torch.device, rank: int, world: int
           ) -> tuple[list[float], dict[str, np.ndarray]]:
    model = load_canonical(_empty(spec, dev, dtype, False), params)
    if sync_bn:  # PyTorch's SyncBatchNorm needs CUDA tensors (and all-gathers: NCCL)
        model = (nn.SyncBatchNorm.convert_sync_batchnorm(model)
                 if dist.get_backend() == "nccl" else convert_allreduce_batchnorm(model))
    ddp = DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=lr, momentum=momentum)
    ddp.train()
    losses = []
    for x, labels in batches:
        xs, ys = split_batch(x, labels, world)[rank]
        xt = torch.from_numpy(np.ascontiguousarray(xs)).to(dev, model.classifier.weight.dtype)
        yt = torch.from_numpy(ys).to(dev)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(ddp(xt), yt)  # this shard's mean; DDP averages the grads
        loss.backward()
        optimizer.step()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        losses.append(float(mean_loss) / world)
    return losses, export_canonical(model)


def data_parallel_runs(spec: DenseNetSpec, params: Mapping[str, np.ndarray],
                       batches: Sequence[tuple[np.ndarray, np.ndarray]], *, devices: int = 2,
                       modes: Sequence[bool] = (True, False), lr: float, momentum: float,
                       dtype: str = "float32", device: str = "cpu"
                       ) -> list[tuple[list[float], dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """:func:`data_parallel_steps` for each ``sync_bn`` in ``modes``, in one start of the
    processes (each run from ``params``, with its own model and optimizer)."""
    batches = check_batches(spec, batches, devices)  # a clear error here, not in a child process
    with tempfile.TemporaryDirectory() as tmp:
        result_path = os.path.join(tmp, "rank0.pkl")
        # a failure in any rank is raised here (ProcessRaisedException, with its traceback)
        mp.start_processes(_replica, nprocs=devices, start_method="spawn", join=True,
                           args=(devices, _free_port(), spec.to_dict(), dict(params), batches,
                                 tuple(modes), lr, momentum, dtype, device, result_path))
        with open(result_path, "rb") as f:
            results = pickle.load(f)
    out = []
    for losses, exported in results:
        running = {k: v for k, v in exported.items()
                   if k.endswith(("running_mean", "running_var"))}
        out.append((losses, {k: v for k, v in exported.items() if k not in running}, running))
    return out


def data_parallel_steps(spec: DenseNetSpec, params: Mapping[str, np.ndarray],
                        batches: Sequence[tuple[np.ndarray, np.ndarray]], *, devices: int = 2,
                        sync_bn: bool, lr: float, momentum: float, dtype: str = "float32",
                        device: str = "cpu"
                        ) -> tuple[list[float], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """K DDP steps of SGD with momentum (PyTorch's update) over ``devices`` processes, one
    per ``(x, labels)`` global batch, starting from the canonical ``params``.

    Returns (the loss of each step, the mean over replicas before the update; rank 0's
    final trainable parameters; its running statistics), canonical names and layout.
    ``device`` is "cpu" (gloo) or "cuda" (nccl with a GPU per rank, else gloo).
    """
    return data_parallel_runs(spec, params, batches, devices=devices, modes=(sync_bn,), lr=lr,
                              momentum=momentum, dtype=dtype, device=device)[0]
