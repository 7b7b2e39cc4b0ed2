"""Evaluate a trained model on a labeled set: accuracy, loss, per-class accuracy, confusion matrix,
and the gain of each test-time augmentation mode."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from resnet5m.data.cifar10 import CLASSES
from resnet5m.evaluation.inference import predict_logits
from resnet5m.evaluation.metrics import evaluate_logits
from resnet5m.io.atomic import atomic_write_text
from resnet5m.runtime.distributed import SINGLE, Dist


def evaluate_modes(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, modes: list[str], *,
                   batch_size: int = 1000, device: torch.device | str = "cpu", channels_last: bool = True,
                   dtype: torch.dtype = torch.float32, dist: Dist = SINGLE) -> dict[str, dict[str, Any]]:
    """Metrics (accuracy, loss, per-class accuracy, confusion) and seconds for ``none`` and each TTA mode."""
    out: dict[str, dict[str, Any]] = {}
    for mode in ["none", *[m for m in modes if m != "none"]]:
        t0 = time.perf_counter()
        logits = predict_logits(model, images, batch_size=batch_size, tta=mode, device=device,
                                channels_last=channels_last, dtype=dtype, dist=dist)
        out[mode] = {**evaluate_logits(logits, labels).to_dict(), "seconds": time.perf_counter() - t0}
    return out


def evaluate_model(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, tta_modes: list[str],
                   batch_size: int = 1000, device: torch.device | str = "cpu") -> dict[str, Any]:
    """``resnet5m evaluate``: TTA ``none`` plus each requested mode, with each mode's gain over ``none``."""
    modes = evaluate_modes(model, images, labels, tta_modes, batch_size=batch_size, device=device)
    base = modes["none"]["accuracy"]
    for r in modes.values():
        r["gain_vs_none"] = r["accuracy"] - base
    return {"n": len(labels), "modes": modes}


def final_evaluation(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, tta: str,
                     batch_size: int = 1000, device: torch.device | str = "cpu", channels_last: bool = True,
                     dtype: torch.dtype = torch.float32, dist: Dist = SINGLE) -> dict[str, Any]:
    """The test numbers of a finished run, measured once, with and without its TTA (``train``, the
    benchmarks and the search all report through this)."""
    modes = evaluate_modes(model, images, labels, [tta], batch_size=batch_size, device=device,
                           channels_last=channels_last, dtype=dtype, dist=dist)
    plain, best = modes["none"], modes[tta]
    return {"test_acc": best["accuracy"], "test_loss": best["loss"], "tta": tta,
            "test_acc_no_tta": plain["accuracy"], "test_loss_no_tta": plain["loss"],
            "eval_time_s": plain["seconds"], "tta_time_s": best["seconds"] if tta != "none" else 0.0,
            "per_class_accuracy": best["per_class_accuracy"], "confusion": best["confusion"]}


def confusion_csv(confusion: list[list[int]], classes: tuple[str, ...] = CLASSES) -> str:
    lines = ["true\\predicted," + ",".join(classes)]
    lines += [f"{c}," + ",".join(str(v) for v in row) for c, row in zip(classes, confusion)]
    return "\n".join(lines) + "\n"


def format_report(result: dict[str, Any], classes: tuple[str, ...] = CLASSES) -> str:
    lines = []
    for mode, r in result["modes"].items():
        gain = f"  ({r['gain_vs_none'] * 100:+.2f} pts vs no TTA)" if mode != "none" else ""
        lines.append(f"tta {mode:<15} accuracy {r['accuracy']:.4f}  loss {r['loss']:.4f}  "
                     f"[{r['seconds']:.1f}s]{gain}")
    best = result["modes"][result["reported_mode"]]
    lines.append("")
    lines.append(f"per-class accuracy (tta {result['reported_mode']}):")
    for c, a in zip(classes, best["per_class_accuracy"]):
        lines.append(f"  {c:<11} {a:.4f}")
    lines.append("")
    lines.append("confusion matrix (rows true, columns predicted):")
    header = "            " + " ".join(f"{c[:5]:>5}" for c in classes)
    lines.append(header)
    for c, row in zip(classes, best["confusion"]):
        lines.append(f"  {c:<10}" + " ".join(f"{v:>5}" for v in row))
    return "\n".join(lines)


def write_confusion_csv(path: Path, confusion: list[list[int]]) -> None:
    atomic_write_text(path, confusion_csv(confusion))
