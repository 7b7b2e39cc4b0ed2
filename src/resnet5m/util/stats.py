"""Mean, sample standard deviation and standard error over seeds (pure functions, no I/O)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


def mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    """(mean, sample std with n-1, n) of the non-missing values; std is 0 for a single value."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(vals)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return mean, std, n


def std_error(std: float, n: int) -> float:
    """Standard error of a mean of ``n`` values with sample std ``std`` (nan for n < 2)."""
    return std / math.sqrt(n) if n > 1 else math.nan


SUMMARY_KEYS = ("test_acc", "test_loss", "test_acc_no_tta", "train_acc", "train_loss", "best_val_acc",
                "train_time_s", "wall_time_s", "tta_time_s", "epochs")


def summarize_seeds(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per key of ``SUMMARY_KEYS``: mean, std, standard error, n and the values."""
    out: dict[str, Any] = {"n": len(results), "seeds": [r.get("seed") for r in results]}
    for key in SUMMARY_KEYS:
        m, s, n = mean_std(r.get(key) for r in results)
        if n:
            out[key] = {"mean": m, "std": s, "se": std_error(s, n), "n": n, "values": [r.get(key) for r in results]}
    if results:
        out["params"] = results[0].get("params")
    return out


def fmt_mean_std(entry: dict[str, Any] | None, scale: float = 1.0, digits: int = 2) -> str:
    if not entry:
        return "-"
    if entry["n"] > 1:
        return f"{entry['mean'] * scale:.{digits}f} ± {entry['std'] * scale:.{digits}f}"
    return f"{entry['mean'] * scale:.{digits}f}"
