"""Export a trained model to ONNX or TorchScript, with a parity check against PyTorch.

Exported models take float32 images in [0, 1] (uint8 / 255), NCHW, 32x32; the normalisation is the
model's first layer, so it is baked in. The output is the raw logits (N, 10).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from resnet5m.errors import UserError
from resnet5m.io.atomic import atomic_path, removing_new_folders

FORMATS = ("onnx", "torchscript")


def export_onnx(model: nn.Module, path: Path, opset: int = 17) -> None:
    example = torch.rand(2, 3, 32, 32)
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UserError("ONNX export needs the export extra: pip install 'resnet5m[export]'") from None
    with atomic_path(path) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(tmp), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                          dynamo=False)


def export_torchscript(model: nn.Module, path: Path) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated upstream, still asked for
        scripted = torch.jit.trace(model, torch.rand(2, 3, 32, 32))
    with atomic_path(path) as tmp:
        scripted.save(str(tmp))


def run_exported(path: Path, fmt: str, x: torch.Tensor) -> np.ndarray:
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("the ONNX parity check needs onnxruntime: pip install 'resnet5m[export]'") from None
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sess.run(None, {"images": x.numpy()})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(x).numpy()


def export_model(model: nn.Module, path: str | os.PathLike[str], fmt: str, check_images: torch.Tensor,
                 tolerance: float = 1e-4) -> float:
    """Write the export and return the max |logit difference| vs PyTorch on ``check_images`` (float [0,1]).

    The file is written beside ``path`` under a temporary name, checked, and only then renamed into
    place: an export that fails the parity check leaves nothing behind."""
    if fmt not in FORMATS:
        raise UserError(f"format {fmt!r} is not supported; allowed: {', '.join(FORMATS)}")
    model = model.to("cpu", memory_format=torch.contiguous_format).eval().float()
    path = Path(path)
    x = check_images.float().contiguous()
    with torch.no_grad():
        ref = model(x).numpy()
    if not np.isfinite(ref).all():  # no parity check can pass, and such a model is no use exported
        raise UserError(f"the model's outputs are not finite (NaN or inf) for {int((~np.isfinite(ref)).any(1).sum())} "
                        f"of {len(ref)} test images; not exported")
    staged = path.with_name(f".{path.name}.unchecked")
    with removing_new_folders(path.parent):
        try:
            (export_onnx if fmt == "onnx" else export_torchscript)(model, staged)
            diff = float(np.abs(run_exported(staged, fmt, x) - ref).max())
            if not diff < tolerance:
                raise UserError(f"exported model differs from PyTorch by {diff:.2e} (>= {tolerance:g}); not written")
            os.replace(staged, path)
        finally:
            staged.unlink(missing_ok=True)
    return diff
