"""Optimizers from the config: parameter groups (decay / no-decay, boosted BN-bias lr, head lr),
the decoupled airbench-style SGD parametrisation, and Muon for convolution filters."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from resnet5m.training.config import OptimizerConfig


def decoupled_sgd_hparams(lr: float, weight_decay: float, momentum: float, batch_size: int) -> tuple[float, float]:
    """Convert airbench/Page-style hyperparameters to torch SGD's (for a batch-mean loss).

    ``lr`` and ``weight_decay`` are given per 1024 examples and divided by Nesterov's step
    magnification 1 + 1/(1 - momentum), so momentum and batch size can change without re-tuning:
    the torch lr grows linearly with the batch size, and the decay applied per epoch
    (lr x wd x steps) stays the same for any batch size.
    """
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    torch_lr = lr * batch_size / kilostep
    torch_wd = weight_decay / lr
    return torch_lr, torch_wd


_NS_COEFFS = (3.4445, -4.7750, 2.0315)  # the quintic's coefficients (Jordan et al., Muon)


def _zeropower_newton_schulz(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise a matrix (U S V^T -> roughly U V^T) with a quintic Newton-Schulz
    iteration tuned for a steep slope at zero (Jordan et al., Muon)."""
    a, b, c = _NS_COEFFS
    x = g / (g.norm() + eps)
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if transposed else x


def _zeropower_batched(mats: list[torch.Tensor], steps: int = 3, eps: float = 1e-7) -> list[torch.Tensor]:
    """:func:`_zeropower_newton_schulz` of several matrices in one batched iteration (a few launches
    instead of a few per matrix: on a GPU the per-tensor loop leaves it idle, BENCHMARKS.md section 5).
    Each matrix is turned wide (rows <= cols), zero-padded to the largest shape and scaled by its own
    norm; the padding stays zero (each iterate is a polynomial in X X^T times X), so every result equals
    the single-matrix one up to rounding."""
    a, b, c = _NS_COEFFS
    tall = [m.size(0) > m.size(1) for m in mats]
    wide = [m.T if t else m for m, t in zip(mats, tall)]
    rows, cols = max(m.size(0) for m in wide), max(m.size(1) for m in wide)
    x = torch.stack([F.pad(m, (0, cols - m.size(1), 0, rows - m.size(0))) for m in wide])
    x = x / (x.norm(dim=(1, 2), keepdim=True) + eps)
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * s @ s) @ x
    out = [x[i, :m.size(0), :m.size(1)] for i, m in enumerate(wide)]
    return [o.T if t else o for o, t in zip(out, tall)]


def muon_directions(ps: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor], momentum: float,
                    nesterov: bool, batched: bool) -> list[torch.Tensor]:
    """Muon's step before its lr: momentum (in ``bufs``), each filter bank rescaled in place to norm
    sqrt(out channels), and the orthogonalised (Nesterov) momentum of each, shaped as its parameter."""
    torch._foreach_mul_(bufs, momentum)
    torch._foreach_add_(bufs, grads)
    gs = torch._foreach_add(grads, bufs, alpha=momentum) if nesterov else bufs
    scale = torch._foreach_reciprocal(torch._foreach_norm(ps))  # keep each layer's weight norm fixed
    torch._foreach_mul_(scale, [len(p) ** 0.5 for p in ps])
    torch._foreach_mul_(ps, scale)
    mats = [g.reshape(len(g), -1).float() for g in gs]
    updates = _zeropower_batched(mats) if batched else [_zeropower_newton_schulz(m) for m in mats]
    return [u.reshape(p.shape).to(p.dtype) for u, p in zip(updates, ps)]


class Muon(torch.optim.Optimizer):
    """Momentum, then an orthogonalised update per filter bank; weights are kept at fixed norm.

    One step is a handful of ``_foreach`` ops and, with ``batched`` (default: on a GPU), one batched
    Newton-Schulz iteration for all filter banks; on a CPU the per-matrix iteration avoids the padding's
    extra arithmetic. Both give the same update up to rounding. ``compiled`` runs :func:`muon_directions`
    under ``torch.compile`` (fused kernels instead of a launch per small op: on a GPU the eager step
    leaves the device idle, BENCHMARKS.md section 5); the lr is applied outside it, so a scheduled lr
    does not recompile."""

    def __init__(self, params, lr: float = 0.24, momentum: float = 0.6, nesterov: bool = True,
                 batched: bool | None = None, compiled: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov))
        self.batched = batched
        self.directions = torch.compile(muon_directions, dynamic=False) if compiled else muon_directions

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch signature
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            if not ps:
                continue
            for p in ps:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
            grads, bufs = [p.grad for p in ps], [self.state[p]["momentum_buffer"] for p in ps]
            batched = self.batched if self.batched is not None else ps[0].is_cuda
            updates = self.directions(ps, grads, bufs, group["momentum"], group["nesterov"], batched)
            torch._foreach_add_(ps, updates, alpha=-group["lr"])


def param_groups(named_params: Iterable[tuple[str, torch.Tensor]], head_ids: set[int], cfg: OptimizerConfig,
                 lr: float, wd: float) -> list[dict]:
    """Split trainable parameters into groups: weights, BN/bias (optionally no decay, scaled lr), head.

    With ``decoupled``, a group's weight decay is divided by its lr scale so that the decay applied
    per step (lr x wd) does not grow with the scale ("boost the BN-bias lr, not its decay").
    """
    groups: dict[str, dict] = {}

    def add(key: str, p: torch.Tensor, lr_scale: float, decay: bool) -> None:
        group_wd = (wd / lr_scale if cfg.decoupled else wd) if decay else 0.0
        groups.setdefault(key, {"params": [], "lr": lr * lr_scale, "weight_decay": group_wd})["params"].append(p)

    for _, p in named_params:
        if not p.requires_grad:
            continue
        if p.ndim <= 1:  # BatchNorm scales/shifts and biases
            add("norm_bias", p, cfg.bias_lr_scale, not cfg.no_decay_bn_bias)
        elif id(p) in head_ids:
            add("head", p, cfg.head_lr_scale, True)
        else:
            add("weights", p, 1.0, True)
    return list(groups.values())


def build_optimizers(model: nn.Module, cfg: OptimizerConfig, batch_size: int) -> list[torch.optim.Optimizer]:
    """One optimizer, or two for ``muon`` (Muon for conv filters, Nesterov SGD for everything else)."""
    lr, wd = cfg.lr, cfg.weight_decay
    if cfg.decoupled:
        lr, wd = decoupled_sgd_hparams(cfg.lr, cfg.weight_decay, cfg.momentum, batch_size)
    head = getattr(model, "head", None)
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    named = list(model.named_parameters())
    if cfg.name == "muon":
        filters = [p for _, p in named if p.requires_grad and p.ndim == 4]
        filter_ids = {id(p) for p in filters}
        rest = [(n, p) for n, p in named if id(p) not in filter_ids]
        opts: list[torch.optim.Optimizer] = [
            torch.optim.SGD(param_groups(rest, head_ids, cfg, lr, wd), lr=lr, momentum=cfg.momentum, nesterov=True)]
        if filters:
            opts.append(Muon(filters, lr=cfg.muon_lr, momentum=cfg.muon_momentum, batched=cfg.muon_batched,
                             compiled=cfg.muon_compile))
        return opts
    groups = param_groups(named, head_ids, cfg, lr, wd)
    if cfg.name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    elif cfg.name == "adam":
        opt = torch.optim.Adam(groups, lr=lr, betas=cfg.betas, eps=cfg.eps)
    elif cfg.name == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, eps=cfg.eps)
    elif cfg.name == "adadelta":
        opt = torch.optim.Adadelta(groups, lr=lr, rho=cfg.rho, eps=cfg.eps)
    elif cfg.name == "adagrad":
        opt = torch.optim.Adagrad(groups, lr=lr, eps=cfg.eps)
    elif cfg.name == "rmsprop":
        opt = torch.optim.RMSprop(groups, lr=lr, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum)
    else:  # pragma: no cover - the config validator only admits the names above
        raise ValueError(cfg.name)
    return [opt]


def set_lr_factor(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    """Scale every group's lr to ``initial_lr * factor`` (initial_lr recorded on first call)."""
    for opt in optimizers:
        for g in opt.param_groups:
            g.setdefault("initial_lr", g["lr"])
            g["lr"] = g["initial_lr"] * factor
