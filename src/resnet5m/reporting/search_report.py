"""The report of a ``resnet5m search`` study folder: the trials table (CSV, Markdown), the best trial's
config as a recipe (``best.yaml``), plots (validation accuracy vs parameters with the Pareto front,
optimisation history, per-epoch curves, parameter importances) and a self-contained ``report.html``.

Trials are read from the study's storage when it can be opened, else from the ``trials.json`` snapshot
the last search wrote. Only ``final/`` (``--final``) holds test-set numbers.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from resnet5m.errors import UserError
from resnet5m.io import rundir
from resnet5m.io.atomic import atomic_write_text
from resnet5m.io.yamlfile import read_yaml
from resnet5m.reporting.plots import _save, plt
from resnet5m.training.config import RECIPE_METADATA
from resnet5m.util.stats import fmt_mean_std

SEARCH_FILE = "search.json"
SNAPSHOT = "trials.json"
FINAL_DIR = "final"


def is_search_dir(path: str | Path) -> bool:
    return (Path(path) / SEARCH_FILE).is_file()


# --- trials as plain records -------------------------------------------------------------------------

def trial_record(t: Any) -> dict[str, Any]:
    """One Optuna ``FrozenTrial`` as a JSON-able dict (what the table, the plots and ``--final`` use)."""
    ua = t.user_attrs
    inter = {int(k): float(v) for k, v in sorted(t.intermediate_values.items()) if v is not None}
    state = t.state.name
    val_acc = ua.get("val_acc") if state == "COMPLETE" else (max(inter.values()) if inter else None)
    return {
        "number": t.number, "state": state, "values": ua.get("values") or dict(t.params),
        "val_acc": None if ua.get("over_budget") or ua.get("invalid") else val_acc,
        "params_count": ua.get("params"), "budget": ua.get("budget"), "train_s": ua.get("train_s"),
        "over_budget": bool(ua.get("over_budget")), "invalid": ua.get("invalid"), "error": ua.get("error"),
        "pruned_epoch": ua.get("pruned_epoch"), "interrupted": bool(ua.get("interrupted")),
        "selected_epoch": ua.get("selected_epoch"),
        "epochs": ua.get("epochs"), "retry_of": t.system_attrs.get("failed_trial"), "run_dir": ua.get("run_dir"),
        "intermediate": inter, "objective": list(t.values) if t.values is not None else None,
        "start": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
        "duration_s": t.duration.total_seconds() if t.duration else None,
    }


def trial_records(study: Any) -> list[dict[str, Any]]:
    return [trial_record(t) for t in study.get_trials(deepcopy=False)]


def feasible(r: dict[str, Any]) -> bool:
    return r["state"] == "COMPLETE" and not r["over_budget"] and not r["invalid"] and r["val_acc"] is not None


def best_trial(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Highest validation accuracy among completed trials within the budget (ties: fewer parameters)."""
    ok = [r for r in records if feasible(r)]
    return max(ok, key=lambda r: (r["val_acc"], -(r["params_count"] or 0), -r["number"])) if ok else None


def pareto_front(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Completed in-budget trials that no other beats on both validation accuracy and parameter count."""
    ok = sorted((r for r in records if feasible(r) and r["params_count"] is not None),
                key=lambda r: (r["params_count"], -r["val_acc"]))
    front, best = [], -math.inf
    for r in ok:
        if r["val_acc"] > best:
            front.append(r)
            best = r["val_acc"]
    return front


def status_label(r: dict[str, Any]) -> str:
    label = _status(r)
    return f"{label} (retry of {r['retry_of']})" if r.get("retry_of") is not None else label


def _status(r: dict[str, Any]) -> str:
    if r["over_budget"]:
        return "over budget"
    if r["invalid"]:
        return "invalid"
    if r["state"] == "PRUNED":
        return f"pruned (epoch {r['pruned_epoch']})" if r.get("pruned_epoch") else "pruned"
    if r["state"] == "FAIL" and r.get("interrupted"):
        return "interrupted (Ctrl-C/SIGTERM, queued again)"
    if r["state"] == "FAIL":
        return "diverged" if (r["error"] or "").startswith("diverged") else "failed" if r["error"] \
            else "killed (heartbeat lost)"
    return r["state"].lower()


def counts(records: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        label = status_label(r).split(" (")[0]
        out[label] = out.get(label, 0) + 1
    return out


def counts_line(records: list[dict[str, Any]]) -> str:
    c = counts(records)
    order = ["complete", "pruned", "over budget", "invalid", "diverged", "failed", "killed", "interrupted", "running",
             "waiting"]
    return f"{len(records)} in all: " + ", ".join(f"{c[k]} {k}" for k in order if c.get(k))


# --- tables ------------------------------------------------------------------------------------------

def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def table_rows(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    rows = []
    for r in records:
        rows.append({
            "trial": str(r["number"]), "state": status_label(r),
            "params": "; ".join(f"{k}={_fmt_value(v)}" for k, v in r["values"].items()),
            "val acc (%)": f"{r['val_acc'] * 100:.2f}" if r["val_acc"] is not None else "-",
            "model params": f"{r['params_count']:,}" if r["params_count"] is not None else "-",
            "train s": f"{r['train_s']:.1f}" if r["train_s"] is not None else "-",
            "over budget": "yes" if r["over_budget"] else "",
        })
    return rows


def markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "(no trials yet)\n"
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r[h].replace("|", "\\|") for h in headers) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_table(records: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["number", "state", "status", "params", "val_acc", "params_count", "train_s", "over_budget",
                "pruned_epoch", "error"])
    for r in records:
        w.writerow([r["number"], r["state"], status_label(r), json.dumps(r["values"], sort_keys=True),
                    "" if r["val_acc"] is None else f"{r['val_acc']:.6g}",
                    "" if r["params_count"] is None else r["params_count"],
                    "" if r["train_s"] is None else f"{r['train_s']:.3f}", int(r["over_budget"]),
                    r["pruned_epoch"] or "", r["invalid"] or r["error"] or ""])
    return buf.getvalue()


# --- plots -------------------------------------------------------------------------------------------

def plot_pareto(records: list[dict[str, Any]], budget: int | None, path: Path) -> Path:
    """Validation accuracy vs trainable parameters; the Pareto front joined, over-budget trials as red x."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    done = [r for r in records if feasible(r)]
    pruned = [r for r in records if r["state"] == "PRUNED" and r["val_acc"] is not None and r["params_count"]]
    over = [r for r in records if r["over_budget"] and r["params_count"]]
    accs = [r["val_acc"] * 100 for r in done + pruned] or [0.0]
    floor = min(accs) - 2
    if done:
        ax.scatter([r["params_count"] for r in done], [r["val_acc"] * 100 for r in done], s=28, label="completed")
    if pruned:
        ax.scatter([r["params_count"] for r in pruned], [r["val_acc"] * 100 for r in pruned], s=28,
                   facecolors="none", edgecolors="gray", label="pruned (val acc when stopped)")
    if over:
        ax.scatter([r["params_count"] for r in over], [floor] * len(over), marker="x", color="tab:red",
                   label="over budget (not trained)")
    front = pareto_front(records)
    if front:
        ax.step([r["params_count"] for r in front], [r["val_acc"] * 100 for r in front], where="post",
                color="tab:orange", lw=1.5, label="Pareto front")
        ax.scatter([r["params_count"] for r in front], [r["val_acc"] * 100 for r in front], s=60,
                   facecolors="none", edgecolors="tab:orange")
    if budget:
        ax.axvline(budget, color="tab:red", ls="--", lw=1, label=f"budget {budget:,}")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("validation accuracy vs size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_history(records: list[dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    done = [r for r in records if feasible(r)]
    pruned = [r for r in records if r["state"] == "PRUNED" and r["val_acc"] is not None]
    if done:
        ax.scatter([r["number"] for r in done], [r["val_acc"] * 100 for r in done], s=24, label="completed")
        xs, ys, best = [], [], -math.inf
        for r in sorted(done, key=lambda r: r["number"]):
            best = max(best, r["val_acc"] * 100)
            xs.append(r["number"])
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:orange", label="best so far")
    if pruned:
        ax.scatter([r["number"] for r in pruned], [r["val_acc"] * 100 for r in pruned], s=24,
                   facecolors="none", edgecolors="gray", label="pruned")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("optimisation history")
    ax.grid(alpha=0.3)
    if done or pruned:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_curves(records: list[dict[str, Any]], path: Path) -> Path:
    """Validation accuracy per epoch of every trained trial (pruned ones end early, dashed)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for r in records:
        if not r["intermediate"]:
            continue
        steps = sorted(r["intermediate"])
        ax.plot(steps, [r["intermediate"][s] * 100 for s in steps], marker=".", lw=1,
                ls="--" if r["state"] == "PRUNED" else "-", alpha=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("per-epoch validation accuracy (dashed: pruned)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def importances(study: Any) -> tuple[dict[str, float] | None, str]:
    """Parameter importances for validation accuracy over completed in-budget trials, or (None, why not)."""
    if study is None:
        return None, "the study's storage could not be opened (importances need it)"
    import optuna

    trials = [t for t in study.get_trials(deepcopy=False)
              if t.state.name == "COMPLETE" and not t.user_attrs.get("over_budget") and not t.user_attrs.get("invalid")]
    if len(trials) < 3:
        return None, f"needs at least 3 completed in-budget trials (have {len(trials)})"
    try:  # a single-objective copy on validation accuracy, so the evaluator knows higher is better
        tmp = optuna.create_study(direction="maximize")
        tmp.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=t.values[0])
                        for t in trials])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = optuna.importance.get_param_importances(tmp)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return None, f"not computable ({' '.join(str(exc).split())[:160]})"
    if not scores:
        return None, "no parameter varies across the completed trials"
    return dict(scores), ""


def plot_importances(scores: dict[str, float], path: Path) -> Path:
    names = list(scores)[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(names) + 1.2))
    ax.barh(names, [scores[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance for validation accuracy")
    ax.set_title("parameter importances (completed trials within the budget)")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


# --- the report --------------------------------------------------------------------------------------

def load_records(study_dir: Path, study: Any = None,
                 storage: str | None = None) -> tuple[list[dict[str, Any]], Any, dict[str, Any]]:
    """(records, live study or None, search.json) of a search folder: from ``study``, else from the storage
    at ``storage`` (a URL the user gives), else from the folder's own ``study.db``, else from the snapshot.
    The storage URL recorded in search.json is never opened: a folder does not choose where a report
    connects or writes (give it with ``--storage`` to read a PostgreSQL study live)."""
    meta = rundir.read_json(study_dir / SEARCH_FILE, "not a search study folder")
    if study is None:
        study = _try_load(study_dir, meta, storage)
    if study is not None:
        records = trial_records(study)
        rundir.write_json(study_dir / SNAPSHOT, {"study": meta.get("name"), "trials": records})
        return records, study, meta
    snap = study_dir / SNAPSHOT
    if not snap.exists():
        raise UserError(f"{study_dir}: its storage cannot be opened and there is no {SNAPSHOT} snapshot")
    return rundir.read_json(snap, "trials snapshot")["trials"], None, meta


def driver_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; with only psycopg2 installed, name that driver."""
    import importlib.util

    if url.startswith(("postgresql://", "postgres://")) and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def _try_load(study_dir: Path, meta: dict[str, Any], storage: str | None = None) -> Any:
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if storage is None:
            if meta.get("storage") != "default" or not (study_dir / "study.db").is_file():
                return None  # the snapshot
            storage = f"sqlite:///{(study_dir / 'study.db').resolve()}"
        return optuna.load_study(study_name=meta["name"], storage=driver_url(storage))
    except Exception:  # unreachable server, missing driver, ...: use the snapshot
        return None


def best_recipe(study_dir: Path, best: dict[str, Any], meta: dict[str, Any]) -> str:
    """The best trial's resolved config as a recipe for ``resnet5m train --config best.yaml``."""
    cfg = read_yaml(study_dir / best["run_dir"] / rundir.CONFIG)
    for key in RECIPE_METADATA:  # the base recipe's, not this config's (description is set below)
        cfg.pop(key, None)
    cfg["name"] = None
    cfg["threads"] = None
    cfg.pop("shortened", None)  # relative to the space's base: best.yaml is a recipe of its own (its header says
    # how it was trained), and a run of it on all 50,000 images must not carry the trial's note
    cfg["description"] = (f"best trial {best['number']} of search {meta.get('name')}: validation accuracy "
                          f"{best['val_acc'] * 100:.2f}% on data.val_size={cfg.get('data', {}).get('val_size')}, "
                          f"{best['params_count']:,} trainable parameters")
    data = cfg.get("data") or {}
    subset = data.get("train_subset")
    whole = "--val-size 0" + (" --set data.train_subset=null" if subset else "")
    epochs = (cfg.get("train") or {}).get("epochs")
    head = (f"# resnet5m search {meta.get('name')}: the best trial ({best['number']}) as a recipe, as trained in "
            f"the search ({f'{epochs:g}' if isinstance(epochs, (int, float)) else epochs} epochs on "
            f"{f'{subset:,}' if subset else 'all the'} training images, "
            f"{data.get('val_size', 0):,} more held out for validation).\n"
            f"# Train it: resnet5m train --config best.yaml; on all 50,000 images: add {whole} (and --epochs N for "
            f"the full length); or resnet5m search ... --final, which does so and tests once per seed\n")
    return head + yaml.safe_dump(cfg, sort_keys=False)


def final_summary(study_dir: Path) -> dict[str, Any] | None:
    path = study_dir / FINAL_DIR / rundir.SUMMARY
    if not path.exists():
        return None
    summary = rundir.read_json(path, "final summary")
    trial = study_dir / FINAL_DIR / "trial.json"
    if trial.exists():
        summary = {**summary, "trial": rundir.read_json(trial, "final record").get("trial")}
    cfg_file = study_dir / FINAL_DIR / rundir.CONFIG
    if cfg_file.exists():
        summary = {**summary, "shortened": (read_yaml(cfg_file) or {}).get("shortened")}
    return summary


def build_search_report(study_dir: str | Path, out_dir: str | Path | None = None, study: Any = None,
                        storage: str | None = None) -> dict[str, Any]:
    """Write trials.csv, trials.md, best.yaml, the plots and report.html into ``out_dir`` (default: the
    study folder); returns {records, best, counts_line}."""
    study_dir = Path(study_dir)
    out = Path(out_dir) if out_dir is not None else study_dir
    records, study, meta = load_records(study_dir, study, storage)
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(records)
    best = best_trial(records)
    atomic_write_text(out / "trials.csv", csv_table(records))
    if best is not None and best.get("run_dir"):
        atomic_write_text(out / "best.yaml", best_recipe(study_dir, best, meta))
    plots_dir = out / "plots"
    figs = [("validation accuracy vs parameters", plot_pareto(records, meta.get("budget"), plots_dir / "pareto.png")),
            ("optimisation history", plot_history(records, plots_dir / "history.png")),
            ("per-epoch validation accuracy", plot_curves(records, plots_dir / "curves.png"))]
    scores, why = importances(study)
    if scores:
        figs.append(("parameter importances", plot_importances(scores, plots_dir / "importances.png")))
    final = final_summary(study_dir)
    line = counts_line(records)
    md = render_markdown(meta, rows, best, line, final, why)
    atomic_write_text(out / "trials.md", md)
    atomic_write_text(out / "report.html", render_html(meta, rows, best, line, final, figs, why))
    return {"records": records, "best": best, "counts_line": line, "importances": scores}


def _best_text(best: dict[str, Any] | None) -> str:
    if best is None:
        return "No trial has completed within the budget yet."
    return (f"Best trial: {best['number']}, validation accuracy {best['val_acc'] * 100:.2f}%, "
            f"{best['params_count']:,} trainable parameters (`best.yaml`).")


def _final_text(final: dict[str, Any] | None) -> str:
    if final is None:
        return ("No test-set number: trials are scored on the validation split only. `resnet5m search SPACE "
                "--final --seeds 100,101,102` retrains the best config on all 50,000 training images and tests it.")
    n = final.get("n", "?")
    short = f" ({final['shortened']}: a quick version, not the trial's full recipe)" if final.get("shortened") else ""
    return (f"Final (trial {final.get('trial', '?')} retrained without a validation split, {n} fresh seed(s))"
            f"{short}: test accuracy {fmt_mean_std(final.get('test_acc'), 100)} %. This is the only test-set "
            "number of the search.")


def render_markdown(meta: dict[str, Any], rows: list[dict[str, str]], best: dict[str, Any] | None, line: str,
                    final: dict[str, Any] | None, why: str) -> str:
    parts = [f"# search {meta.get('name')}\n",
             f"Objective: {', '.join(meta.get('objectives', []))} on the validation split "
             f"(val_size {meta.get('val_size')}); budget {meta.get('budget'):,} trainable parameters; "
             f"pruner {meta.get('pruner')}.\n",
             f"Trials: {line}.\n", _best_text(best) + "\n", _final_text(final) + "\n",
             markdown_table(rows)]
    if why:
        parts.append(f"\nParameter importances: {why}.\n")
    return "\n".join(parts)


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def render_html(meta: dict[str, Any], rows: list[dict[str, str]], best: dict[str, Any] | None, line: str,
                final: dict[str, Any] | None, figs: list[tuple[str, Path]], why: str) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in rows[0]) if rows else ""
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    images = "".join(f'<figure><img src="{_img(p)}" alt="{esc(t)}"><figcaption>{esc(t)}</figcaption></figure>'
                     for t, p in figs)
    note = f"<p>Parameter importances: {esc(why)}.</p>" if why else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>resnet5m search: {esc(str(meta.get('name')))}</title>
<style>
body {{ font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto; max-width: 1250px;
       color: #1d2430; line-height: 1.45; padding: 0 1rem; }}
h2 {{ margin-top: 2rem; border-bottom: 1px solid #dde; }} .meta {{ color: #667; font-size: .9rem; }}
table {{ border-collapse: collapse; width: 100%; font-size: .85rem; }} .scroll {{ overflow-x: auto; }}
th, td {{ border: 1px solid #d5d9e0; padding: .3rem .5rem; text-align: right; }}
th {{ background: #f2f4f8; }} td:nth-child(3) {{ text-align: left; font-family: monospace; font-size: .8rem; }}
img {{ max-width: 100%; border: 1px solid #e4e6ea; }} figcaption {{ color: #556; font-size: .85rem; }}
.note {{ background: #eef6ff; border-left: 4px solid #3b82f6; padding: .5rem .8rem; }}
</style></head><body>
<h1>resnet5m search: {esc(str(meta.get('name')))}</h1>
<p class="meta">generated {time.strftime("%Y-%m-%d %H:%M")} · objective {esc(", ".join(meta.get("objectives", [])))}
on the validation split (val_size {meta.get("val_size")}) · budget {meta.get("budget", 0):,} trainable parameters
(over-budget configs are never trained) · pruner {esc(str(meta.get("pruner")))}</p>
<p>Trials: {esc(line)}.</p>
<p>{esc(_best_text(best))}</p>
<p class="note">{esc(_final_text(final))}</p>
<h2>Plots</h2>
{images}
{note}
<h2>Trials</h2>
<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>
</body></html>
"""
