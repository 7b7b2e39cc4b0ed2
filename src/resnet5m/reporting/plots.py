"""Matplotlib figures (headless): training curves, overlays across runs, confusion heat maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from resnet5m.io.atomic import atomic_path  # noqa: E402


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def confusion_heatmap(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: Path,
                      title: str = "Confusion matrix") -> Path:
    import numpy as np

    cm = np.asarray(confusion, dtype=float)
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(7.2, 6.2))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if frac[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    return _save(fig, path)


def run_curves(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Loss and accuracy per epoch (train and validation) of one run."""
    epochs = [r["epoch"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot(epochs, [r["train_loss"] for r in rows], label="train", marker=".")
    if any(r.get("val_loss") is not None for r in rows):
        a1.plot(epochs, [r.get("val_loss") for r in rows], label="validation", marker=".")
    a2.plot(epochs, [r["train_acc"] for r in rows], label="train", marker=".")
    if any(r.get("val_acc") is not None for r in rows):
        a2.plot(epochs, [r.get("val_acc") for r in rows], label="validation", marker=".")
    for ax, name in ((a1, "loss"), (a2, "accuracy")):
        ax.ticklabel_format(useOffset=False, axis="y")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def overlay_curves(series: dict[str, Sequence[dict[str, Any]]], path: Path, title: str = "") -> Path:
    """Validation (or train, without a validation split) loss and accuracy of several runs overlaid."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for name, rows in series.items():
        epochs = [r["epoch"] for r in rows]
        for ax, key in zip(axes.flat, ("train_loss", "val_loss", "train_acc", "val_acc")):
            vals = [r.get(key) for r in rows]
            if any(v is not None for v in vals):
                ax.plot(epochs, vals, label=name, marker=".", markersize=3)
    for ax, key in zip(axes.flat, ("train loss", "validation loss", "train accuracy", "validation accuracy")):
        ax.ticklabel_format(useOffset=False, axis="y")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
