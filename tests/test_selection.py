"""train.select: example selection by a proxy net's losses. The selection rule on hand-made inputs, the
config's checks, and tiny real runs (step count, results, keep=1 is the plain run, exact resume)."""

from __future__ import annotations

import json
import tempfile

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from resnet5m.data.cifar10 import Cifar10
from resnet5m.data.loader import Batch
from resnet5m.errors import UserError
from resnet5m.io import rundir
from resnet5m.models import FastNetConfig, ResNetConfig
from resnet5m.runtime.distributed import Dist
from resnet5m.training import Trainer, build_config, train_run
from resnet5m.training import loop as loop_module
from resnet5m.training import trainer as trainer_module
from resnet5m.training.selection import candidate_batch_size, hardest, select_hardest

TINY = {
    "model": {"blocks": [1, 1], "channels": [16, 32]},
    "data": {"val_size": 200, "train_subset": 600},
    "train": {"epochs": 1, "batch_size": 100, "eval_batch_size": 200,
              "select": {"keep": 0.5, "proxy": {"family": "fastnet", "widths": [16, 32, 32]}, "proxy_epochs": 0.5}},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
    "augment": {"crop": {"padding": 4}, "flip": {}},
}


def tiny(*sets: str, select: bool = True):
    data = json.loads(json.dumps(TINY))
    if not select:
        del data["train"]["select"]
    return build_config(None, list(sets), extra=data)


def small_test_set(cifar) -> Cifar10:
    return Cifar10(cifar.train_images, cifar.train_labels, cifar.test_images[:200], cifar.test_labels[:200],
                   "test set cut to 200")


# --- the rule ----------------------------------------------------------------------------------------

def test_hardest_keeps_the_highest_loss_examples_in_their_order():
    # the proxy returns its input as logits; example i's margin on its label sets its loss
    margins = torch.tensor([3.0, -2.0, 0.5, 5.0, -1.0, 1.0, 2.0, -3.0])
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    logits = torch.zeros(8, 3)
    logits[torch.arange(8), y] = margins
    losses = F.cross_entropy(logits, y, reduction="none")
    assert torch.equal(losses.argsort(descending=True)[:3].sort().values, torch.tensor([1, 4, 7]))
    assert hardest(nn.Identity(), logits, y, 3).tolist() == [1, 4, 7]  # the three negative margins, in order
    assert hardest(nn.Identity(), logits, y, 5).tolist() == [1, 2, 4, 5, 7]
    assert hardest(nn.Identity(), logits, y, 8).tolist() == list(range(8))


class FirstPixels(nn.Module):
    """A hand-made proxy: the logits are the first pixel of each of the 3 channels, times 10."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * x[:, :, 0, 0]


def test_select_hardest_keeps_images_labels_and_indices_together():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 4, 4, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (12,), generator=gen)
    batch = Batch(x, y, torch.arange(100, 112), number=7)
    out = select_hardest(FirstPixels(), batch, 4)
    losses = F.cross_entropy(10 * x[:, :, 0, 0], y, reduction="none")
    expected = losses.topk(4).indices.sort().values
    assert torch.equal(out.indices, 100 + expected) and out.number == 7
    assert torch.equal(out.images, x[expected]) and torch.equal(out.labels, y[expected])
    assert out.images.is_contiguous(memory_format=torch.channels_last)
    assert losses[expected].min() >= losses[[i for i in range(12) if i not in expected.tolist()]].max()


def test_candidate_batch_is_batch_size_over_keep():
    assert candidate_batch_size(100, 0.5) == 200
    assert candidate_batch_size(100, 0.7) == 143
    assert candidate_batch_size(3, 0.1) == 30  # 3 / 0.1 is 30.000000000000004 in floats
    assert candidate_batch_size(128, 1.0) == 128


# --- the config --------------------------------------------------------------------------------------

def test_select_config_parses_and_is_off_by_default():
    assert build_config().train.select is None
    sel = tiny().train.select
    assert sel.keep == 0.5 and sel.proxy == FastNetConfig(widths=[16, 32, 32]) and sel.proxy_epochs == 0.5
    assert tiny("train.select.proxy=reddy2024").train.select.proxy == ResNetConfig(blocks=[2, 2, 2],
                                                                                     channels=[64, 128, 256])
    assert tiny("train.select={keep: 0.7}").train.select.proxy.family == "fastnet"  # the default proxy


def test_proxy_yaml_path_is_relative_to_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "proxy.yaml").write_text("family: fastnet\nwidths: [8, 8, 8]\n")
    (tmp_path / "sub" / "run.yaml").write_text("train: {select: {keep: 0.5, proxy: proxy.yaml}}\n")
    assert build_config(str(tmp_path / "sub" / "run.yaml")).train.select.proxy.widths == [8, 8, 8]


@pytest.mark.parametrize("setting, message", [
    ("train.select.keep=0", "train.select.keep: Input should be greater than 0"),
    ("train.select.keep=1.5", "train.select.keep: Input should be less than or equal to 1"),
    ("train.select.proxy_epochs=0", "train.select.proxy_epochs: Input should be greater than 0"),
    ("train.select.proxy=nope", "unknown model preset 'nope'"),
    ("train.select.proxy={family: fastnet, widths: x}", "train.select.proxy.widths: Input should be a valid list"),
    ("train.select.proxy={family: fastnet, depth: 3}", "train.select.proxy.depth: unknown key"),
    ("train.select.proxy={family: mlp}", "unknown family 'mlp'"),
    ("train.select={proxy_epochs: 1}", "train.select.keep: Field required"),
])
def test_bad_select_settings_are_one_line_errors(setting, message):
    with pytest.raises(UserError) as err:
        tiny(setting)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_several_processes_refuse_select():
    from resnet5m.training.trainer import check_distributable

    check_distributable(tiny(select=False), Dist(rank=0, world=2))
    with pytest.raises(UserError, match="train.select .*several processes") as err:
        check_distributable(tiny(), Dist(rank=0, world=2))
    assert "\n" not in str(err.value)


# --- tiny real runs ----------------------------------------------------------------------------------

def test_a_run_with_selection_trains_batch_size_on_fewer_steps(cifar, tmp_path, monkeypatch):
    sizes: list[tuple[str, int]] = []
    step = loop_module.train_step

    def spy(p, i, x, targets):
        sizes.append((type(p.model).__name__, len(x)))
        return step(p, i, x, targets)

    monkeypatch.setattr(loop_module, "train_step", spy)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    results = train_run(tiny(), small_test_set(cifar), tmp_path / "run", out=lambda s: None, progress=False)
    # the proxy: 600 images / 100 = 6 steps an epoch, 0.5 epochs; the model: candidates of 200 -> 3 steps of 100
    assert sizes == [("FastNet", 100)] * 3 + [("ResNet", 100)] * 3
    assert results["steps"] == 3 and results["epochs"] == 1 and results["test_acc"] is not None
    assert rundir.read_results(tmp_path / "run")["steps"] == 3
    assert len(rundir.read_metrics(tmp_path / "run")) == 1
    assert not list((tmp_path / "tmp").glob("resnet5m-proxy-*"))  # the proxy's temporary folder is removed

    plain = Trainer(tiny(select=False), cifar, tmp_path / "plain", out=lambda s: None, progress=False)
    assert plain.loader.batch_size == 100 and plain.steps_per_epoch == 6  # off by default: the plain run


SMALLER = ("data.train_subset=300", "train.batch_size=50", "train.select.proxy={family: fastnet, widths: [8, 8, 8]}")


def test_keep_one_trains_exactly_the_plain_runs_steps(cifar, tmp_path):
    """keep=1 selects every candidate in order: the same steps as without train.select (the proxy leaves
    the run's random state and batches alone)."""
    plain = Trainer(tiny(*SMALLER[:2], select=False), cifar, tmp_path / "a", out=lambda s: None, progress=False)
    plain.fit()
    keep_all = Trainer(tiny(*SMALLER, "train.select.keep=1"), cifar, tmp_path / "b", out=lambda s: None,
                       progress=False)
    keep_all.fit()
    assert keep_all.proxy is not None and plain.proxy is None
    assert len(plain.step_losses) == 6 and keep_all.step_losses == plain.step_losses


class Killed(Exception):
    pass


def test_resume_with_selection_matches_an_uninterrupted_run(cifar, tmp_path, monkeypatch):
    cfg = tiny(*SMALLER, "train.epochs=2", "deterministic=true")
    ref = Trainer(cfg, cifar, tmp_path / "ref", out=lambda s: None, progress=False)
    ref.fit()
    victim = Trainer(cfg, cifar, tmp_path / "run", out=lambda s: None, progress=False)
    append = victim.metrics.append

    def append_then_die(row):
        append(row)
        if row["epoch"] == 2:
            raise Killed  # after epoch 2's row, before its checkpoint: resume from epoch 1's

    victim.metrics.append = append_then_die
    with pytest.raises(Killed):
        victim.fit()

    def no_second_proxy(*a, **k):
        raise AssertionError("a resumed run loads its proxy from the checkpoint")

    monkeypatch.setattr(trainer_module, "train_proxy", no_second_proxy)
    resumed = Trainer(cfg, cifar, tmp_path / "run", out=lambda s: None, progress=False)
    resumed.fit(resume=True)
    keys = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc")
    assert [[r[k] for k in keys] for r in rundir.read_metrics(tmp_path / "run")] == \
           [[r[k] for k in keys] for r in rundir.read_metrics(tmp_path / "ref")]
    a, b = load_file(str(tmp_path / "ref" / rundir.LAST)), load_file(str(tmp_path / "run" / rundir.LAST))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.state.train_time_s > 0 and resumed.state.step == 2 * 3  # candidates of 100 of 300 images
