"""Presets build the published models; the builder covers the design space; the budget is enforced."""

from __future__ import annotations

import pytest
import torch

from resnet5m.errors import UserError
from resnet5m.models import (
    PRESETS,
    FastNetConfig,
    ResNetConfig,
    build_model,
    check_budget,
    count_parameters,
    resolve_model_config,
)
from resnet5m.models.layers import SqueezeExcite
from resnet5m.models.summary import summarize

PUBLISHED = {
    "bhat2023": 4_032_330,
    "bhat2023-433": 4_401_738,
    "reddy2024": 2_777_674,
    "mehta2023": 4_935_242,
    "kunkolienker2024": 4_398_890,
    "li2024": 4_587_690,
    "resnet18": 11_173_962,
    "fast": 2_055_384,  # ours (not published): the fast recipe's residual net
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_counts(name):
    assert count_parameters(build_model(name)) == PUBLISHED[name]
    assert PRESETS[name].params == PUBLISHED[name]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_forward_shapes(name):
    model = build_model(name).eval()
    with torch.no_grad():
        assert model(torch.rand(3, 3, 32, 32)).shape == (3, 10)


def test_fast_preset_is_residual_and_is_the_fast_recipe_model():
    from resnet5m.training.config import build_config
    from resnet5m.training.recipes import resolve_recipe

    cfg = PRESETS["fast"].config
    assert cfg.skip == "projection" and PRESETS["fast"].params < 5_000_000
    assert build_config(resolve_recipe("fast"), []).model == cfg


def test_preset_structure_details():
    kunk = build_model("kunkolienker2024")
    assert sum(isinstance(m, SqueezeExcite) for m in kunk.modules()) == 12
    li = build_model("li2024")
    assert any(isinstance(m, torch.nn.GELU) for m in li.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in li.modules())
    r = build_model("reddy2024")
    assert r.stem[0].kernel_size == (3, 3) and r.stem[0].out_channels == 64
    assert r.head.in_features == 256


def test_design_space_knobs_change_the_model():
    base = dict(blocks=[1, 1], channels=[16, 32])
    n0 = count_parameters(build_model(ResNetConfig(**base)))
    n_k5 = count_parameters(build_model(ResNetConfig(**base, kernels=[5, 5])))
    n_sk3 = count_parameters(build_model(ResNetConfig(**base, skip_kernels=[1, 3])))
    assert n_k5 > n0 and n_sk3 == n0 + 16 * 32 * 8
    m = build_model(ResNetConfig(**base, pool=4))  # 16x16 final map -> 4x4 pooled -> 16 positions
    assert m.head.in_features == 32 * 16
    m = build_model(ResNetConfig(**base, strides=[2, 2], stem_channels=8, activation="silu", dropout=0.2))
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert m.stages[0][0].conv1.stride == (2, 2) and m.stem[0].out_channels == 8
    m = build_model(ResNetConfig(**base, num_classes=100))
    assert m(torch.rand(1, 3, 32, 32)).shape == (1, 100)


def test_normalisation_is_inside_the_model():
    cfg = ResNetConfig(blocks=[1], channels=[8], std=(0.2023, 0.1994, 0.2010))
    m = build_model(cfg)
    assert torch.allclose(m.normalize.std.flatten(), torch.tensor([0.2023, 0.1994, 0.2010]))
    assert "normalize.mean" in m.state_dict()


@pytest.mark.parametrize("kwargs, message", [
    (dict(blocks=[2, 2], channels=[64]), "channels has 1 entries but blocks has 2 stages"),
    (dict(blocks=[2], channels=[64], kernels=[4]), "kernels must be odd"),
    (dict(blocks=[2], channels=[64], strides=[3]), "strides must be 1 or 2"),
    (dict(blocks=[0], channels=[64]), "blocks must be 1..64"),
    (dict(blocks=[2], channels=[64], activation="tanh"), "activation"),
    (dict(blocks=[2], channels=[64], colour="red"), "colour: unknown key"),
])
def test_invalid_configs_are_one_line_errors(kwargs, message):
    with pytest.raises(UserError, match=message) as info:
        resolve_model_config(kwargs)
    assert "\n" not in str(info.value)


def test_pool_larger_than_feature_map_is_rejected():
    with pytest.raises(UserError, match="larger than the final feature map"):
        build_model(ResNetConfig(blocks=[1, 1, 1, 1], channels=[8, 8, 8, 8], pool=8))


def test_budget_check():
    model = build_model("resnet18")
    with pytest.raises(UserError, match=r"11,173,962 trainable parameters, over the budget of 5,000,000"):
        check_budget(model)
    assert check_budget(model, allow_over=True) == 11_173_962
    assert check_budget(build_model("reddy2024")) == 2_777_674


def test_yaml_model_and_overrides(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("blocks: [3, 3, 2, 3]\nchannels: [64, 128, 128, 256]\npool: 4\n")
    cfg = resolve_model_config(str(p))
    assert count_parameters(build_model(cfg)) == 4_935_242
    run = tmp_path / "run.yaml"
    run.write_text("model: li2024\n")
    assert resolve_model_config(str(run)) == PRESETS["li2024"].config
    child = tmp_path / "child.yaml"  # a recipe that inherits its model through `base:`
    child.write_text("base: run.yaml\noptimizer: {lr: 0.01}\n")
    assert resolve_model_config(str(child)) == PRESETS["li2024"].config
    cfg = resolve_model_config("reddy2024", {"activation": "gelu"})
    assert cfg.activation == "gelu" and cfg.blocks == [2, 2, 2]
    bad = tmp_path / "bad.yaml"
    bad.write_text("blocks: [1\n")
    with pytest.raises(UserError, match="invalid YAML"):
        resolve_model_config(str(bad))


def test_summary_reports_params_and_mult_adds():
    s = summarize(build_model("reddy2024"))
    assert s.trainable_params == 2_777_674 and s.within_budget
    assert 400e6 < s.mult_adds < 450e6
    assert "BasicBlock" in s.table and "Estimated Total Size" in s.table


def test_fastnet_is_residual_and_within_budget():
    m = build_model(FastNetConfig(skip="identity"))
    assert count_parameters(m, trainable_only=False) < 5_000_000
    x = torch.rand(4, 3, 32, 32)
    m.init_from_data(torch.rand(64, 3, 32, 32))
    assert m(x).shape == (4, 10)
    # identity skip: zeroing the second conv of a group leaves act(x) flowing through
    g = m.groups[0]
    with torch.no_grad():
        g.conv2.weight.zero_()
    g.eval()
    z = torch.randn(2, 24, 16, 16)
    inner = g.act(g.norm1(torch.nn.functional.max_pool2d(g.conv1(z), 2)))
    assert torch.allclose(g(z), g.act(inner + g.norm2(g.conv2(inner))))  # identity skip around conv2
    assert not torch.allclose(g(z), torch.zeros_like(g(z)))
