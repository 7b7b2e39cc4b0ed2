"""Multi-process training with ``torch.distributed`` (launched by ``torchrun``): who this process is, and
the few collectives the loop needs. With one process every helper here is a no-op.

Semantics (the same run whatever the number of processes): the batch is the global batch; every rank
walks the same epoch permutation and takes its contiguous shard of each batch, augmented with the
global batch's random stream (``AugContext``); DDP averages gradients; evaluation is sharded and
gathered; only rank 0 writes files.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from resnet5m.errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (no-ops in a single process) --

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (a stop request, a failure)."""
        if not self.enabled:
            return flag
        t = torch.tensor([float(flag)], device=_device())
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of ``t`` over ranks (e.g. a shard's loss -> the global batch's loss)."""
        if not self.enabled:
            return t
        t = t.detach().clone()
        dist.all_reduce(t)
        return t / self.world

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return t
        t = t.detach().clone()
        dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of ``n`` items (sizes differ by at most one)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's shard of rows, concatenated in rank order, on every rank."""
        if not self.enabled:
            return local
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, local.cpu())
        return torch.cat(parts)

    def objects(self, obj: Any) -> list[Any]:
        """``obj`` from every rank, in rank order."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


SINGLE = Dist()


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """A differentiable all-reduce (sum): its backward all-reduces the gradient."""
    from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

    with warnings.catch_warnings():  # deprecated in favour of functional collectives, which have no autograd
        warnings.simplefilter("ignore", FutureWarning)
        return differentiable_all_reduce(t)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the global batch on any backend (torch's SyncBatchNorm is CUDA-only): the batch
    mean, then the variance, are all-reduced with differentiable collectives, so gradients flow through
    the global statistics. One process computes the same two-pass statistics (without collectives), so
    that 1 and N processes differ only in the order of float additions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return self._normalise(x, lambda t: t)
        return self._normalise(x, all_reduce)

    def _normalise(self, x: torch.Tensor, all_reduce) -> torch.Tensor:  # noqa: ANN001 - sum over processes
        count = x.new_tensor(float(x.numel() // x.size(1)))
        n = all_reduce(count.detach())
        mean = all_reduce(x.sum((0, 2, 3))) / n
        centred = x - mean.view(1, -1, 1, 1)
        var = all_reduce(centred.square().sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1), m)
                self.num_batches_tracked += 1
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1) if self.affine else y


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of ``model`` normalised over the global batch: torch's SyncBatchNorm on CUDA
    with several processes, ``GlobalBatchNorm2d`` otherwise. Parameters (and whether they train) and
    statistics are kept."""
    if device.type == "cuda" and dist.is_initialized() and dist.get_world_size() > 1:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, GlobalBatchNorm2d):
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats, device=device)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            setattr(model, name, new)
        else:
            sync_batchnorm(child, device)
    return model


def _device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def from_env() -> Dist:
    """The process group described by torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``),
    initialised once: NCCL when CUDA is available, gloo otherwise. One process: ``SINGLE``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local)
        backend = "nccl" if cuda else "gloo"
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # the launcher's store outlives a restart of the group: give each attempt its own key space, or a
            # restarted rank can read the previous attempt's addresses (gloo: "connectFullMesh ... refused")
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                                  timeout=timedelta(minutes=5))
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            dist.init_process_group(backend, store=dist.PrefixStore(f"resnet5m/attempt{attempt}", store),
                                    rank=rank, world_size=world)
        else:
            dist.init_process_group(backend)
    return Dist(rank=rank, world=world, local_rank=local)


def restarted() -> bool:
    """True in a group that torchrun restarted after a failure (``--max-restarts``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def max_restarts() -> int:
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))


def agree(d: Dist, what: str, value: str) -> None:
    """Refuse to start when ranks disagree on ``value`` (e.g. their resolved configs): one line, from rank 0."""
    values = d.objects(value)
    bad = [r for r, v in enumerate(values) if v != values[0]]
    if bad:
        raise UserError(f"rank {bad[0]} has a different {what} than rank 0 (nodes started with different "
                        "arguments or files?)")


def all_or_none(d: Dist, fn, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` on every rank; if it fails anywhere, every rank raises the first failure's message."""
    try:
        result, error = fn(*args, **kwargs), None
    except UserError as exc:
        result, error = None, str(exc)
    errors = d.objects(error)
    first = next(((r, e) for r, e in enumerate(errors) if e is not None), None)
    if first is not None:
        raise UserError(f"rank {first[0]}: {first[1]}" if d.enabled else first[1])
    return result
