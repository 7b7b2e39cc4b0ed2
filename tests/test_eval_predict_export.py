"""evaluate / predict / export / study / report end to end, on a tiny model trained on real data."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from resnet5m.cli.main import main
from resnet5m.errors import UserError
from resnet5m.evaluation.inference import predict_logits
from resnet5m.models.weights import load_trained_model
from resnet5m.training import build_config, train_run

TINY = {
    "model": {"blocks": [1, 1], "channels": [16, 32]},
    "data": {"val_size": 500, "train_subset": 2000},
    "train": {"epochs": 2, "batch_size": 100, "eval_batch_size": 2000},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
    "schedule": {"name": "cosine"},
}


@pytest.fixture(scope="module")
def trained_run(cifar, tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    (root / "c.yaml").write_text(yaml.safe_dump(TINY))
    run = root / "run"
    run.mkdir()
    train_run(build_config(str(root / "c.yaml")), cifar, run, progress=False)
    return run


def test_evaluate_matches_a_direct_computation(trained_run, cifar, data_env, capsys):
    assert main(["evaluate", str(trained_run), "--tta", "all", "--out", str(trained_run / "ev")]) == 0
    result = json.loads((trained_run / "ev" / "evaluation.json").read_text())
    model, _ = load_trained_model(trained_run)
    with torch.no_grad():
        logits = torch.cat([model(x.float() / 255) for x in cifar.test_images.split(1000)])
    acc = (logits.argmax(1) == cifar.test_labels).float().mean().item()
    loss = torch.nn.functional.cross_entropy(logits, cifar.test_labels).item()
    assert result["modes"]["none"]["accuracy"] == pytest.approx(acc, abs=1e-6)
    assert result["modes"]["none"]["loss"] == pytest.approx(loss, rel=1e-4)
    cm = np.array(result["modes"]["none"]["confusion"])
    assert cm.sum() == 10000 and np.trace(cm) == round(acc * 10000)
    assert set(result["modes"]) == {"none", "flip", "flip_translate"}
    for f in ("confusion.csv", "confusion.png"):
        assert (trained_run / "ev" / f).stat().st_size > 100
    assert (trained_run / "ev" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "per-class accuracy" in out and "vs no TTA" in out
    # the run's own results.json agrees with evaluate
    assert json.loads((trained_run / "results.json").read_text())["test_acc"] == pytest.approx(acc, abs=1e-6)


def test_evaluate_on_another_labeled_set(trained_run, cifar, tmp_path, capsys):
    # a CIFAR-10.1-style file: one labeled set, uint8 HWC, keys x/y
    x = cifar.test_images[:300].permute(0, 2, 3, 1).numpy()
    y = cifar.test_labels[:300].numpy()
    np.savez(tmp_path / "other.npz", x=x, y=y)
    assert main(["evaluate", str(trained_run), "--data", str(tmp_path / "other.npz"), "--tta", "none",
                 "--out", str(tmp_path / "ev")]) == 0
    result = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    model, _ = load_trained_model(trained_run)
    with torch.no_grad():
        acc = (model(cifar.test_images[:300].float() / 255).argmax(1) == cifar.test_labels[:300]).float().mean()
    assert result["modes"]["none"]["accuracy"] == pytest.approx(acc.item(), abs=1e-6)
    assert np.array(result["modes"]["none"]["confusion"]).sum() == 300
    # the full CIFAR-10 layout given with --data: its test split
    np.savez(tmp_path / "full.npz", x_train=x[:20], y_train=y[:20], x_test=x, y_test=y)
    assert main(["evaluate", str(trained_run), "--data", str(tmp_path / "full.npz"), "--tta", "none",
                 "--out", str(tmp_path / "ev2")]) == 0
    full = json.loads((tmp_path / "ev2" / "evaluation.json").read_text())
    assert full["modes"]["none"]["accuracy"] == result["modes"]["none"]["accuracy"]
    np.savez(tmp_path / "bad.npz", x=x, labels=y)
    assert main(["evaluate", str(trained_run), "--data", str(tmp_path / "bad.npz")]) == 2
    assert "expected x_train, y_train, x_test, y_test or one labeled set" in capsys.readouterr().err


def test_tta_keeps_order_and_averages_the_right_views(trained_run, cifar):
    model, _ = load_trained_model(trained_run)
    x = cifar.test_images[:64]
    perm = torch.randperm(64)
    for mode in ("none", "flip", "flip_translate"):
        a = predict_logits(model, x, tta=mode, batch_size=16)
        b = predict_logits(model, x[perm], tta=mode, batch_size=64)
        assert torch.allclose(a[perm], b, atol=1e-5), mode
    xf = x.float() / 255
    with torch.no_grad():
        flip = 0.5 * model(xf) + 0.5 * model(xf.flip(-1))
        pad = torch.nn.functional.pad(xf, (1, 1, 1, 1), mode="reflect")
        ul, dr = pad[:, :, :32, :32], pad[:, :, 2:, 2:]
        six = 0.5 * flip + 0.25 * (0.5 * model(ul) + 0.5 * model(ul.flip(-1))) + \
            0.25 * (0.5 * model(dr) + 0.5 * model(dr.flip(-1)))
    assert torch.allclose(predict_logits(model, x, tta="flip"), flip, atol=1e-5)
    assert torch.allclose(predict_logits(model, x, tta="flip_translate"), six, atol=1e-5)


def test_predict_writes_the_course_csv(trained_run, cifar, tmp_path):
    rows = cifar.test_images[:50].reshape(50, 3072).numpy()
    ids = np.arange(1000, 1050)
    (tmp_path / "cifar_test_nolabels.pkl").write_bytes(pickle.dumps({b"data": rows, b"ids": ids}))
    hwc = cifar.test_images[:50].permute(0, 2, 3, 1).numpy()
    (tmp_path / "cifar_test_nolabel.pkl").write_bytes(pickle.dumps({b"data": hwc}))
    out1, out2 = tmp_path / "p1.csv", tmp_path / "p2.csv"
    assert main(["predict", str(trained_run), str(tmp_path / "cifar_test_nolabels.pkl"), "-o", str(out1),
                 "--tta", "none"]) == 0
    assert main(["predict", str(trained_run), str(tmp_path / "cifar_test_nolabel.pkl"), "-o", str(out2),
                 "--tta", "none"]) == 0
    r1 = list(csv.reader(out1.open()))
    r2 = list(csv.reader(out2.open()))
    assert r1[0] == ["ID", "Labels"] and r2[0] == ["ID", "Labels"]
    assert [int(r[0]) for r in r1[1:]] == list(ids) and [int(r[0]) for r in r2[1:]] == list(range(50))
    assert [r[1] for r in r1[1:]] == [r[1] for r in r2[1:]]  # both layouts give the same predictions
    model, _ = load_trained_model(trained_run)
    expected = predict_logits(model, cifar.test_images[:50]).argmax(1).tolist()
    assert [int(r[1]) for r in r1[1:]] == expected and all(0 <= int(r[1]) <= 9 for r in r1[1:])


def test_evaluate_and_predict_run_a_channels_last_model(tmp_path, monkeypatch):
    """The inputs are channels_last, so the model must be too (not an NCHW model converting every conv)."""
    from resnet5m.cli import eval_cmd
    from resnet5m.evaluation import evaluate
    from resnet5m.models import build_model, parse_model_config
    from resnet5m.models.weights import save_weights

    model = build_model(parse_model_config(TINY["model"]))
    save_weights(tmp_path / "w.safetensors", model)
    x = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "set.npz", x=x, y=np.arange(20) % 10)
    np.save(tmp_path / "inputs.npy", x)
    seen = []

    def spy(model, images, **kw):
        seen.append(all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.ndim == 4))
        return predict_logits(model, images, **kw)

    monkeypatch.setattr(evaluate, "predict_logits", spy)
    monkeypatch.setattr(eval_cmd, "predict_logits", spy)
    assert main(["evaluate", str(tmp_path / "w.safetensors"), "--data", str(tmp_path / "set.npz"), "--tta", "none",
                 "--device", "cpu", "--out", str(tmp_path / "ev")]) == 0
    assert main(["predict", str(tmp_path / "w.safetensors"), str(tmp_path / "inputs.npy"), "-o",
                 str(tmp_path / "p.csv"), "--tta", "none", "--device", "cpu"]) == 0
    assert seen == [True, True]
    assert len(list(csv.reader((tmp_path / "p.csv").open()))) == 21


def test_predict_bad_input_writes_nothing(trained_run, tmp_path):
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps({b"data": np.zeros((3, 3072), np.float64)}))
    out = tmp_path / "pred.csv"
    r = subprocess.run([sys.executable, "-m", "resnet5m.cli.main", "predict", str(trained_run),
                        str(tmp_path / "bad.pkl"), "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "dtype float64, expected uint8" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "bad.pkl"]


def test_predict_single_image_prints_top3(trained_run, cifar, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(cifar.test_images[0].permute(1, 2, 0).numpy()).save(tmp_path / "one.png")
    assert main(["predict", str(trained_run), str(tmp_path / "one.png")]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ")]
    assert len(lines) == 3
    probs = [float(ln.split()[-1]) for ln in lines]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert not (tmp_path / "predictions.csv").exists()  # printed only


def test_predict_and_evaluate_default_to_the_runs_own_tta(trained_run, cifar, tmp_path, capsys):
    """Predictions match the accuracy the run reported: its eval.tta (here none), not a hard-coded one; one
    image with -o writes the CSV too, and its resize note is one line."""
    from PIL import Image

    np.save(tmp_path / "x.npy", cifar.test_images[:20].permute(0, 2, 3, 1).numpy())
    assert main(["predict", str(trained_run), str(tmp_path / "x.npy"), "-o", str(tmp_path / "p.csv")]) == 0
    assert "(tta none)" in capsys.readouterr().out
    np.savez(tmp_path / "x.npz", x=cifar.test_images[:20].permute(0, 2, 3, 1).numpy(), y=cifar.test_labels[:20].numpy())
    assert main(["evaluate", str(trained_run), "--data", str(tmp_path / "x.npz"), "-o", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text())["reported_mode"] == "none"
    Image.fromarray(cifar.test_images[0].permute(1, 2, 0).numpy()).resize((40, 40)).save(tmp_path / "big.png")
    r = subprocess.run([sys.executable, "-m", "resnet5m.cli.main", "predict", str(trained_run),
                        str(tmp_path / "big.png"), "-o", str(tmp_path / "one.csv")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stderr == "resnet5m: warning: big.png: 40x40 resized to 32x32\n", r.stderr
    assert list(csv.reader((tmp_path / "one.csv").open()))[0] == ["ID", "Labels"]
    run = tmp_path / "run"  # results.json says what the reported accuracy used (config.yaml may be edited since)
    shutil.copytree(trained_run, run)
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "tta": "flip"}))
    assert main(["predict", str(run), str(tmp_path / "x.npy"), "-o", str(tmp_path / "p2.csv")]) == 0
    assert "(tta flip)" in capsys.readouterr().out
    assert main(["predict", str(run), str(tmp_path / "x.npy"), "-o", ""]) == 2  # an empty name is not a default


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_parity(trained_run, cifar, data_env, tmp_path, fmt, capsys):
    out = tmp_path / f"model.{fmt}"
    assert main(["export", str(trained_run), "--format", fmt, "-o", str(out)]) == 0
    assert "max |logit difference|" in capsys.readouterr().out
    x = cifar.test_images[:100].float() / 255
    model, _ = load_trained_model(trained_run)
    with torch.no_grad():
        ref = model(x).numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    else:
        from resnet5m.evaluation.export import run_exported

        got = run_exported(out, "torchscript", x)
    assert np.abs(got - ref).max() < 1e-4


def test_export_fastnet_parity(tmp_path, cifar):
    from resnet5m.evaluation.export import export_model
    from resnet5m.models import FastNetConfig, build_model
    from resnet5m.models.weights import save_weights

    model = build_model(FastNetConfig(widths=[16, 32, 32]))
    model.init_from_data(cifar.train_images[:500].float() / 255)
    save_weights(tmp_path / "w.safetensors", model)
    loaded, _ = load_trained_model(tmp_path / "w.safetensors")
    batch = cifar.test_images[:64].float() / 255
    for fmt in ("onnx", "torchscript"):
        assert export_model(loaded, tmp_path / f"m.{fmt}", fmt, batch) < 1e-4
    # an export that fails its parity check (here: an impossible tolerance) is not left behind
    with pytest.raises(UserError, match="differs from PyTorch"):
        export_model(loaded, tmp_path / "failed.pt", "torchscript", batch, tolerance=0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.torchscript", "w.safetensors"]


def test_micro_study_end_to_end_with_report(tmp_path, data_env):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({**TINY, "train": {"epochs": 3, "batch_size": 100}}))
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "micro", "base": "base.yaml", "seeds": [0, 1],
                                     "variants": {"sgd": {}, "adam": {"optimizer": {"name": "adam", "lr": 0.003}}}}))
    assert main(["study", str(study), "--runs-dir", str(tmp_path / "runs"), "--epochs", "2",
                 "--train-subset", "1000", "--no-progress"]) == 0
    root = tmp_path / "runs" / "micro"
    rep = root / "report"
    for f in ("results.md", "results.csv", "curves_overlay.png", "confusion_best.png", "report.html"):
        assert (rep / f).is_file(), f
    assert sorted(p.name for p in (rep / "curves").iterdir()) == [
        "adam_seed0.png", "adam_seed1.png", "sgd_seed0.png", "sgd_seed1.png"]
    # the table reads the real metrics files
    r0 = json.loads((root / "sgd" / "seed0" / "results.json").read_text())
    r1 = json.loads((root / "sgd" / "seed1" / "results.json").read_text())
    rows = list(csv.DictReader((rep / "results.csv").open()))
    sgd = next(r for r in rows if r["variant"] == "sgd")
    assert float(sgd["test_acc_mean"]) == pytest.approx((r0["test_acc"] + r1["test_acc"]) / 2, rel=1e-5)
    assert float(sgd["test_acc_std"]) == pytest.approx(abs(r0["test_acc"] - r1["test_acc"]) / 2 ** 0.5, rel=1e-4)
    assert sgd["shortened"] == "shortened: epochs=2 of 3, train_subset=1000"
    md = (rep / "results.md").read_text()
    assert "± " in md and "| sgd |" in md and "| adam |" in md
    html = (rep / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6 and "Shortened runs" in html
    assert r0["epochs"] == 2 and r0["train_images"] == 1000
    # re-running skips finished runs
    before = (root / "sgd" / "seed0" / "results.json").stat().st_mtime_ns
    assert main(["study", str(study), "--runs-dir", str(tmp_path / "runs"), "--epochs", "2",
                 "--train-subset", "1000", "--no-progress"]) == 0
    assert (root / "sgd" / "seed0" / "results.json").stat().st_mtime_ns == before


def test_study_marks_shortened_variants_whichever_way_they_were_shortened(tmp_path, monkeypatch):
    """--set train.epochs / data.train_subset / data.val_size shorten a variant as much as --epochs does; the
    note, like train's, gives the variant's own recipe value."""
    from resnet5m.training import study as study_mod

    trained = {}
    monkeypatch.setattr(study_mod, "load_cifar10", lambda path: None)
    monkeypatch.setattr(study_mod, "train_seeds", lambda cfg, data, root, seeds, **kw: trained.update({root.name: cfg}))
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**TINY, "data": {}, "train": {"epochs": 100}}))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"name": "s", "base": "base.yaml", "variants": {
        "plain": {}, "short": {"train": {"epochs": 4}}, "lr": {"optimizer": {"lr": 0.01}}}}))

    def notes(runs, **kw):
        trained.clear()
        root = study_mod.run_study(str(tmp_path / "s.yaml"), tmp_path / runs, progress=False, out=lambda *_: None,
                                   **kw)
        on_disk = {v: yaml.safe_load((root / v / "config.yaml").read_text())["shortened"] for v in trained}
        assert on_disk == {v: cfg.shortened for v, cfg in trained.items()}
        return on_disk

    assert notes("full") == {"plain": None, "short": None, "lr": None}  # variants' own lengths are not shortening
    assert notes("set", overrides=["train.epochs=2", "data.train_subset=3000", "data.val_size=2000"]) == {
        "plain": "shortened: epochs=2 of 100, train_subset=3000, val_size=2000 of 5000",
        "short": "shortened: epochs=2 of 4, train_subset=3000, val_size=2000 of 5000",
        "lr": "shortened: epochs=2 of 100, train_subset=3000, val_size=2000 of 5000"}
    assert notes("flags", epochs=3, train_subset=1000) == {
        "plain": "shortened: epochs=3 of 100, train_subset=1000",
        "short": "shortened: epochs=3 of 4, train_subset=1000",
        "lr": "shortened: epochs=3 of 100, train_subset=1000"}
    changed = "model changed by --set: channels=[8, 24]"  # the study's reported figures are for another net
    assert notes("net", overrides=["model.channels=[8,24]"]) == {"plain": changed, "short": changed, "lr": changed}
    assert notes("lr-only", overrides=["optimizer.lr=0.2"]) == {"plain": None, "short": None, "lr": None}


def _fake_run(path, best_val_acc, test_acc):
    path.mkdir(parents=True)
    rows = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.3 * e,
             "val_loss": None if best_val_acc is None else 2.1 / e,
             "val_acc": None if best_val_acc is None else best_val_acc * e / 2} for e in (1, 2)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    confusion = (np.eye(10, dtype=int) * 90 + 1).tolist()
    (path / "results.json").write_text(json.dumps({
        "params": 1234, "epochs": 2, "train_acc": 0.6, "train_loss": 1.0, "test_acc": test_acc, "test_loss": 1.1,
        "best_val_acc": best_val_acc, "wall_time_s": 10.0, "confusion": confusion}))
    return path


@pytest.mark.parametrize("runs, best, criterion", [
    # the best validation accuracy wins even when another run has the better test accuracy
    ({"a": (0.60, 0.50), "b": (0.50, 0.70)}, "a", "best validation accuracy"),
    # runs without a validation split are not candidates while any run has one
    ({"a": (None, 0.90), "b": (0.40, 0.30)}, "b", "best validation accuracy"),
    # only when no run has a validation split does test accuracy decide, and the report says so
    ({"a": (None, 0.50), "b": (None, 0.70)}, "b", "test accuracy (no run has a validation split)"),
])
def test_report_picks_the_best_run_without_looking_at_the_test_set(tmp_path, runs, best, criterion):
    from resnet5m.reporting.report import build_report

    dirs = [_fake_run(tmp_path / name, *accs) for name, accs in runs.items()]
    out = build_report(dirs, tmp_path / "rep")
    line = f"chosen by {criterion}: {best} ("
    assert line in (out / "results.md").read_text()
    assert line in (out / "report.html").read_text()


def test_report_notes_a_run_started_from_other_weights(tmp_path):
    from resnet5m.reporting.report import build_report

    plain, tuned = _fake_run(tmp_path / "plain", 0.5, 0.5), _fake_run(tmp_path / "tuned", 0.6, 0.6)
    (tuned / "config.yaml").write_text(yaml.safe_dump({"train": {"init_from": "/runs/base"}}))
    text = (build_report([plain, tuned], tmp_path / "rep") / "results.md").read_text()
    assert "started from the weights of /runs/base" in text and text.count("started from the weights") == 1


def test_report_errors(tmp_path):
    with pytest.raises(SystemExit):
        main(["report"])
    assert main(["report", str(tmp_path)]) == 2
