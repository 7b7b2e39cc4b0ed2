"""``resnet5m report``: tables (Markdown, CSV), curves, confusion matrix and a self-contained HTML page
over one or more runs, multi-seed runs or a study."""

from __future__ import annotations

import base64
import csv
import html
import io
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from resnet5m.data.cifar10 import CLASSES
from resnet5m.errors import UserError
from resnet5m.io import rundir
from resnet5m.io.atomic import atomic_write_text, removing_new_folders
from resnet5m.io.yamlfile import read_yaml
from resnet5m.reporting.plots import confusion_heatmap, overlay_curves, run_curves
from resnet5m.reporting.search_report import build_search_report, is_search_dir
from resnet5m.util.stats import mean_std


@dataclass
class Entry:
    """One row of the report: a run, or a variant / multi-seed run with several seeds."""

    name: str
    runs: list[Path]
    results: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    unfinished: list[Path] = field(default_factory=list)


def _seed_dirs(path: Path) -> list[Path]:
    return [rundir.seed_dir(path, s) for s in rundir.read_seeds(path)]


def _entry(name: str, runs: list[Path], config_dir: Path) -> Entry:
    e = Entry(name, [])
    cfg_file = config_dir / rundir.CONFIG
    if cfg_file.exists():
        e.config = read_yaml(cfg_file) or {}
    for r in runs:
        if rundir.status(r) == "finished":
            e.runs.append(r)
            e.results.append(rundir.read_results(r))
        else:
            e.unfinished.append(r)
    return e


def collect(paths: list[str | Path]) -> tuple[list[Entry], str]:
    """Resolve the given paths to report entries; returns (entries, title)."""
    entries: list[Entry] = []
    titles = []
    for raw in paths:
        p = Path(raw)
        kind = rundir.kind(p)
        if kind == "study":
            spec = rundir.read_study(p)
            titles.append(f"study {spec['name']}")
            for v in spec["variants"]:
                entries.append(_entry(v, _seed_dirs(p / v), p / v))
        elif kind == "seeds":
            titles.append(p.name)
            entries.append(_entry(p.name, _seed_dirs(p), p))
        elif kind == "run":
            titles.append(p.name)
            entries.append(_entry(p.name, [p], p))
        else:
            raise UserError(f"{p}: not a run, multi-seed run or study directory (no {rundir.RESULTS}, "
                            f"{rundir.SEEDS} or {rundir.STUDY})")
    if not any(e.results for e in entries):
        raise UserError(f"nothing to report: none of the given runs has finished (no {rundir.RESULTS})")
    return entries, ", ".join(titles)


# --- tables -------------------------------------------------------------------------------------------

COLUMNS = [  # (key in results.json, header, scale, digits)
    ("train_acc", "train acc (%)", 100, 2),
    ("train_loss", "train loss", 1, 4),
    ("test_acc", "test acc (%)", 100, 2),
    ("test_loss", "test loss", 1, 4),
    ("best_val_acc", "best val acc (%)", 100, 2),
    ("wall_time_s", "wall time (s)", 1, 0),
]


def _cell(values: list[Any], scale: float, digits: int) -> str:
    m, s, n = mean_std(values)
    if n == 0:
        return "-"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}" if n > 1 else f"{m * scale:.{digits}f}"


def table_rows(entries: list[Entry]) -> list[dict[str, str]]:
    rows = []
    for e in entries:
        if not e.results:
            continue
        r0 = e.results[0]
        planned = e.config.get("train", {}).get("epochs", r0.get("epochs_planned"))
        row = {"variant": e.name, "params": f"{r0['params']:,}",
               "epochs": f"{r0['epochs']}" + (f" of {planned:g}" if planned and planned != r0["epochs"] else ""),
               "seeds": str(len(e.results))}
        for key, header, scale, digits in COLUMNS:
            row[header] = _cell([r.get(key) for r in e.results], scale, digits)
        reported = (e.config.get("reported") or {}).get("test_acc")
        if any((x.config.get("reported") or {}).get("test_acc") for x in entries):
            row["reported by the study: test acc (%)"] = " / ".join(f"{v * 100:.2f}" for v in reported) \
                if reported else "-"
        init = (e.config.get("train") or {}).get("init_from")  # fine-tuned: its epochs are not all it trained
        row["note"] = "; ".join(x for x in (e.config.get("shortened") or "",
                                            f"started from the weights of {init}" if init else "",
                                            f"{len(e.unfinished)} seed(s) unfinished" if e.unfinished else "",
                                            f"TTA {r0['tta']}" if r0.get("tta", "none") != "none" else "") if x)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, str]]) -> str:
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r[h] for h in headers) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_table(entries: list[Entry]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    keys = [c[0] for c in COLUMNS]
    w.writerow(["variant", "params", "epochs", "seeds", *[f"{k}_{s}" for k in keys for s in ("mean", "std")],
                "shortened"])
    for e in entries:
        if not e.results:
            continue
        stats = [mean_std([r.get(k) for r in e.results])[:2] for k in keys]
        w.writerow([e.name, e.results[0]["params"], e.results[0]["epochs"], len(e.results),
                    *[f"{v:.6g}" for pair in stats for v in pair], e.config.get("shortened") or ""])
    return buf.getvalue()


# --- the best run -------------------------------------------------------------------------------------

VAL_CRITERION = "best validation accuracy"
TEST_CRITERION = "test accuracy (no run has a validation split)"


def select_best(entries: list[Entry]) -> tuple[Entry, Path, dict[str, Any], str]:
    """The run whose confusion matrix the report shows, and the criterion it was chosen by.

    Selection never looks at the test set while any run has a validation split: the highest
    ``best_val_acc`` wins (runs without a split are not candidates). Only when no run has one does it
    fall back to test accuracy, and the returned criterion says so.
    """
    runs = [(e, d, r) for e in entries for d, r in zip(e.runs, e.results)]
    with_val = [t for t in runs if t[2].get("best_val_acc") is not None]
    if with_val:
        return (*max(with_val, key=lambda t: t[2]["best_val_acc"]), VAL_CRITERION)
    return (*max(runs, key=lambda t: t[2]["test_acc"]), TEST_CRITERION)


def _best_line(best: dict[str, Any]) -> str:
    val = f"best validation accuracy {best['best_val_acc'] * 100:.2f}%, " \
        if best.get("best_val_acc") is not None else ""
    return (f"best run, chosen by {best['criterion']}: {best['run']} ({val}test accuracy "
            f"{best['test_acc'] * 100:.2f}%, test loss {best['test_loss']:.4f})")


# --- the report folder --------------------------------------------------------------------------------

def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


# what a damaged results.json, config.yaml or search.json raises deep inside the report (a wrong type, a missing
# key, a matrix of the wrong shape): the inputs are the user's files, so this is a one-line error, not a crash
DAMAGED = (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError)


def build_report(paths: list[str | Path], out_dir: str | Path, storage: str | None = None) -> Path:
    """The report of runs, a study or a search folder, in ``out_dir``. It is built in a hidden folder beside
    ``out_dir`` and moved in only when complete: a damaged input leaves nothing behind (not even the folders
    made for it). ``storage``: a search study's Optuna storage URL (see :func:`load_records`)."""
    out = Path(out_dir)
    with removing_new_folders(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        try:
            try:
                with warnings.catch_warnings():  # e.g. matplotlib on an empty legend: the one line is the error
                    warnings.simplefilter("ignore", UserWarning)
                    _build_report(paths, staging, storage)
            except DAMAGED as exc:
                detail = str(exc).splitlines()[0][:120] if str(exc) else ""
                raise UserError(f"report of {', '.join(map(str, paths))}: damaged or foreign run files "
                                f"({type(exc).__name__}{': ' + detail if detail else ''}); nothing written") from None
            for f in sorted(p for p in staging.rglob("*") if p.is_file()):
                target = out / f.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out


def _build_report(paths: list[str | Path], out: Path, storage: str | None) -> Path:
    if len(paths) == 1 and is_search_dir(paths[0]):  # a `resnet5m search` study folder
        build_search_report(paths[0], out, storage=storage)
        return out
    entries, title = collect(paths)
    (out / "curves").mkdir(parents=True, exist_ok=True)
    rows = table_rows(entries)
    best_entry, best_dir, best_run, criterion = select_best(entries)
    best_label = best_entry.name if len(best_entry.runs) == 1 else f"{best_entry.name} / {best_dir.name}"
    best = {**best_run, "run": best_label, "criterion": criterion}
    atomic_write_text(out / "results.md", f"# {title}\n\n" + markdown_table(rows)
                      + f"\nConfusion matrix (`confusion_best.png`) of the {_best_line(best)}.\n")
    atomic_write_text(out / "results.csv", csv_table(entries))

    per_run: list[tuple[str, Path]] = []
    first_seed: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        for run in e.runs:
            label = e.name if len(e.runs) == 1 else f"{e.name} / {run.name}"
            safe = label.replace(" / ", "_").replace("/", "_")
            per_run.append((label, run_curves(rundir.read_metrics(run), out / "curves" / f"{safe}.png", label)))
        if e.runs:
            first_seed[e.name] = rundir.read_metrics(e.runs[0])
    overlay = overlay_curves(first_seed, out / "curves_overlay.png", f"{title}: all variants (first seed)")

    by = "val acc" if criterion == VAL_CRITERION else "test acc, no validation split"
    confusion = confusion_heatmap(best_run["confusion"], CLASSES, out / "confusion_best.png",
                                  f"best run by {by}: {best_label} (test acc {best_run['test_acc'] * 100:.2f}%)")
    atomic_write_text(out / "report.html", render_html(title, rows, entries, overlay, per_run, confusion, best))
    return out


def render_html(title: str, rows: list[dict[str, str]], entries: list[Entry], overlay: Path,
                per_run: list[tuple[str, Path]], confusion: Path, best: dict[str, Any]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in rows[0])
    # the banner below explains any shortening; keep the table's note column short
    short_rows = [{**r, "note": r["note"].replace(r["note"].split(";")[0], "shortened")
                   if r["note"].startswith("shortened") else r["note"]} for r in rows]
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r.values()) + "</tr>" for r in short_rows)
    shortened = sorted({e.config["shortened"].removeprefix("shortened: ")
                        for e in entries if e.config.get("shortened")})
    warn = (f'<p class="warn">Shortened runs ({esc(", ".join(shortened))}): numbers are from quick versions, '
            "not the full recipes, and are not comparable to the original reports.</p>") if shortened else ""
    curves = "".join(f'<figure><img src="{_img(p)}" alt="{esc(label)}"><figcaption>{esc(label)}</figcaption>'
                     f"</figure>" for label, p in per_run)
    configs = "".join(f"<details><summary>{esc(e.name)}</summary><pre>{esc(yaml.safe_dump(e.config, sort_keys=False))}"
                      f"</pre></details>" for e in entries if e.config)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>resnet5m report: {esc(title)}</title>
<style>
body {{ font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto; max-width: 1250px;
       color: #1d2430; line-height: 1.45; padding: 0 1rem; }}
h1 {{ font-size: 1.6rem; margin-bottom: .2rem; }} h2 {{ margin-top: 2rem; border-bottom: 1px solid #dde; }}
.meta {{ color: #667; font-size: .9rem; }}
table {{ border-collapse: collapse; width: 100%; font-size: .9rem; }}
.scroll {{ overflow-x: auto; }}
th, td {{ border: 1px solid #d5d9e0; padding: .35rem .55rem; text-align: right; white-space: nowrap; }}
td:last-child {{ white-space: normal; min-width: 7rem; }}
th {{ background: #f2f4f8; }} td:first-child, th:first-child, td:last-child, th:last-child {{ text-align: left; }}
tr:nth-child(even) td {{ background: #fafbfc; }}
img {{ max-width: 100%; border: 1px solid #e4e6ea; }} figure {{ margin: 1rem 0; }}
figcaption {{ color: #556; font-size: .85rem; }}
.warn {{ background: #fff6e0; border-left: 4px solid #e6a700; padding: .5rem .8rem; }}
pre {{ background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .8rem; }}
</style></head><body>
<h1>resnet5m report: {esc(title)}</h1>
<p class="meta">generated {time.strftime("%Y-%m-%d %H:%M")} · accuracy as mean ± sample std over seeds where
several exist · model selection on the validation split, test set evaluated once per run</p>
{warn}
<h2>Results</h2>
<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>
<h2>Training curves, all variants</h2>
<figure><img src="{_img(overlay)}" alt="overlaid curves"></figure>
<h2>Confusion matrix of the best run</h2>
<p>{esc(_best_line(best)[0].upper() + _best_line(best)[1:])}.</p>
<figure><img src="{_img(confusion)}" alt="confusion matrix" style="max-width:640px"></figure>
<h2>Per-run curves</h2>
{curves}
<h2>Configurations</h2>
{configs}
</body></html>
"""
