"""``resnet5m evaluate``, ``resnet5m predict`` and ``resnet5m export``."""

from __future__ import annotations

import argparse
import csv
import io
import math
import warnings
from pathlib import Path

import torch

from resnet5m.cli.common import batch_size_arg, check_output_dir, check_output_file
from resnet5m.data.cifar10 import CLASSES
from resnet5m.data.sources import load_cifar10, load_labeled_set
from resnet5m.errors import UserError
from resnet5m.evaluation.evaluate import evaluate_model, format_report, write_confusion_csv
from resnet5m.evaluation.export import FORMATS, export_model
from resnet5m.evaluation.inference import TTA_MODES, predict_logits
from resnet5m.evaluation.inputs import load_inputs
from resnet5m.io import rundir
from resnet5m.io.atomic import atomic_write_text
from resnet5m.io.rundir import write_json
from resnet5m.io.yamlfile import read_yaml
from resnet5m.models.weights import load_trained_model, resolve_weights_path
from resnet5m.runtime.device import resolve_device


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="accuracy, loss, per-class accuracy, confusion matrix (+ TTA gains)")
    p.add_argument("model", metavar="RUN_OR_CHECKPOINT", help="run directory or .safetensors weights")
    p.add_argument("--data", help="CIFAR-10 from any supported source (default: the usual resolution), or an .npz "
                                   "holding one labeled set (x_test/y_test, x/y or images/labels; uint8 HWC)")
    p.add_argument("--split", choices=["test", "train"], default="test", help="which split of --data (default test)")
    p.add_argument("--tta", choices=[*TTA_MODES, "all"], default="all",
                   help="test-time augmentation to report besides none (default: all; the per-class table and "
                        "confusion matrix then use the run's own, eval.tta, as its reported accuracy did)")
    p.add_argument("-o", "--output", "--out", dest="output",
                   help="output folder (default: RUN/evaluation or next to the weights)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=batch_size_arg, default=1000)
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser("predict", help="predict labels for an unlabeled test set (CSV: ID,Labels)")
    p.add_argument("model", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("input", metavar="INPUT", help=".pkl test set, .npz/.npy, image folder, or one image")
    p.add_argument("-o", "--output", help="CSV to write (default predictions.csv; for one image: only printed "
                                          "unless given)")
    p.add_argument("--tta", choices=TTA_MODES,
                   help="test-time augmentation (default: the run's own, eval.tta, so predictions match its "
                        "reported test accuracy)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=batch_size_arg, default=1000)
    p.set_defaults(func=run_predict)

    p = sub.add_parser("export", help="export to ONNX or TorchScript (normalisation baked in)")
    p.add_argument("model", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("-o", "--output", help="output file (default: RUN/model.onnx or model.pt)")
    p.add_argument("--data", help="CIFAR-10 for the parity check batch (default: the usual resolution)")
    p.set_defaults(func=run_export)


def _default_out(model_arg: str, name: str) -> Path:
    p = Path(model_arg)
    return (p if p.is_dir() else p.parent) / name


def _inference_model(path: str, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The trained model in channels_last memory format, matching the channels_last inputs that
    ``predict_logits`` feeds it (as training does), instead of converting layouts in every conv."""
    model, info = load_trained_model(path, device)
    return model.to(memory_format=torch.channels_last), info


def run_tta(info: dict) -> str:
    """The test-time augmentation a run reported its test accuracy with: its ``results.json``'s, else the one
    recorded in its weights (``eval.tta``), else the ``config.yaml``'s beside them (older runs); else none."""
    folder = Path(info["weights_path"]).parent
    tta = None
    if (folder / rundir.RESULTS).is_file():  # what the run's test accuracy was measured with (config.yaml's
        try:  # eval may be edited before a resume)
            tta = rundir.read_results(folder).get("tta")
        except (UserError, AttributeError):
            tta = None
    tta = tta if tta in TTA_MODES else info.get("tta")
    cfg = folder / rundir.CONFIG
    if tta not in TTA_MODES and cfg.is_file():
        try:
            tta = (read_yaml(cfg).get("eval") or {}).get("tta")  # a run's config.yaml is fully resolved
        except (UserError, AttributeError):  # not a config: the default below
            tta = None
    return tta if tta in TTA_MODES else "none"


def run_evaluate(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model, info = _inference_model(args.model, device)
    images, labels, source = load_labeled_set(args.data, args.split)
    out = check_output_dir(args.output if args.output else _default_out(args.model, "evaluation"))
    modes = list(TTA_MODES) if args.tta == "all" else [args.tta]
    result = evaluate_model(model, images, labels, tta_modes=modes, batch_size=args.batch_size, device=device)
    result["reported_mode"] = modes[-1] if args.tta != "all" else run_tta(info)
    result.update(weights=info["weights_path"], data=source, split=args.split)
    if any(not math.isfinite(r["loss"]) for r in result["modes"].values()):
        result["note"] = "null values: the loss was not finite (the logits overflowed)"
    best = result["modes"][result["reported_mode"]]
    write_json(out / "evaluation.json", result)
    write_confusion_csv(out / "confusion.csv", best["confusion"])
    from resnet5m.reporting.plots import confusion_heatmap

    confusion_heatmap(best["confusion"], CLASSES, out / "confusion.png",
                      title=f"{Path(info['weights_path']).parent.name}: {args.split} (tta {result['reported_mode']})")
    print(f"{info['weights_path']} on {source} [{args.split}, {len(labels)} images]")
    print(format_report(result))
    print(f"\nwrote {out}/evaluation.json, confusion.csv, confusion.png")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    inputs = load_inputs(args.input)  # validate the input before loading the model
    is_image = Path(args.input).is_file() and Path(args.input).suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp",
                                                                                 ".gif", ".webp")
    out = None if is_image and args.output is None else check_output_file(
        "predictions.csv" if args.output is None else args.output,
        inputs=(args.input, resolve_weights_path(args.model)))
    model, info = _inference_model(args.model, device)
    tta = args.tta or run_tta(info)
    logits = predict_logits(model, inputs.images, batch_size=args.batch_size, tta=tta, device=device)
    if not torch.isfinite(logits).all():
        raise UserError(f"{info['weights_path']}: the model's outputs are not finite (NaN or inf) for "
                        f"{int((~torch.isfinite(logits)).any(1).sum())} of {len(logits)} images; nothing written")
    probs = torch.softmax(logits, 1)
    if is_image:
        top = probs[0].topk(3)
        print(f"{args.input}:")
        for p, c in zip(top.values.tolist(), top.indices.tolist()):
            print(f"  {CLASSES[c]:<11} {p:.3f}")
        if out is None:
            return 0
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ID", "Labels"])
    for i, label in zip(inputs.ids, probs.argmax(1).tolist()):
        w.writerow([i, label])
    atomic_write_text(out, buf.getvalue())
    counts = torch.bincount(probs.argmax(1), minlength=len(CLASSES)).tolist()
    print(f"wrote {out}: {len(inputs.ids)} predictions (tta {tta}); per class {counts}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    out = check_output_file(args.output if args.output else _default_out(
        args.model, "model.onnx" if args.format == "onnx" else "model.pt"), inputs=(resolve_weights_path(args.model),))
    model, info = load_trained_model(args.model, "cpu")
    data = load_cifar10(args.data)
    batch = data.test_images[:256].float() / 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        diff = export_model(model, out, args.format, batch)
    print(f"wrote {out} ({args.format}); input: float32 NCHW images in [0,1] (uint8/255), normalisation "
          f"included; output: logits (N, 10)")
    print(f"parity on {len(batch)} real test images: max |logit difference| = {diff:.2e} (< 1e-4 required)")
    return 0
