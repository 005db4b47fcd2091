"""Setter precedence (documented once in fxquant.qconfig.setters) and templates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant import QConfig, get_qconfig, qint8, qint16
from fxquant.backends import get_profile
from fxquant.qconfig import (
    FLOAT,
    ModuleNameQconfigSetter,
    OpInfo,
    OpKind,
    SetterContext,
    as_setter_tuple,
    resolve_qconfig,
)

CTX = SetterContext(profile=get_profile("generic"))
Q8 = get_qconfig()
Q16 = get_qconfig(weight_dtype=qint16, out_dtype=qint16)


def op(name, kind=OpKind.WEIGHTED):
    return OpInfo(name, "Conv2d", kind)


def test_earlier_setter_wins_whole_qconfig():
    a = ModuleNameQconfigSetter({"backbone.conv": Q16})
    setters = as_setter_tuple((a, fxquant.default_qat_qconfig_setter))
    assert resolve_qconfig(setters, op("backbone.conv"), CTX) is Q16
    other = resolve_qconfig(setters, op("head.fc"), CTX)
    assert other.weight.arg("dtype") == qint8
    # reversed order: the template has an opinion on every op, so it wins
    rev = as_setter_tuple((fxquant.default_qat_qconfig_setter, a))
    assert resolve_qconfig(rev, op("backbone.conv"), CTX) is not Q16


def test_exact_name_beats_prefix_and_longer_prefix_beats_shorter():
    s = ModuleNameQconfigSetter(
        {"backbone": Q8, "backbone.layer1": Q16, "backbone.layer1.conv": FLOAT}
    )
    assert s(op("backbone.layer1.conv"), CTX) is FLOAT
    assert s(op("backbone.layer1.relu"), CTX) is Q16
    assert s(op("backbone.layer2.conv"), CTX) is Q8
    assert s(op("backbone_x"), CTX) is None  # prefix must end at a dot
    assert s(op("head"), CTX) is None


def test_no_opinion_means_float():
    assert (
        resolve_qconfig(as_setter_tuple(ModuleNameQconfigSetter({"a": Q8})), op("b"), CTX) is None
    )


def test_dict_and_qconfig_shorthands():
    (g,) = as_setter_tuple(Q16)
    assert g(op("anything"), CTX) is Q16
    (m,) = as_setter_tuple({"x": Q8})
    assert isinstance(m, ModuleNameQconfigSetter)


def test_unknown_name_error_lists_close_matches():
    s = ModuleNameQconfigSetter({"backbone.conv1": Q8})
    with pytest.raises(fxquant.UnknownOpNameError) as err:
        s.validate(["backbone.conv_1", "backbone.conv2", "head.fc"])
    msg = str(err.value)
    assert "backbone.conv1" in msg and "backbone.conv_1" in msg


def test_qconfig_activation_alias_and_validation():
    out = fxquant.FakeQuantize.with_args(dtype=qint16)
    assert QConfig(activation=out).output == out
    with pytest.raises(ValueError):
        QConfig(output=out, activation=out)
    with pytest.raises(TypeError):
        QConfig(output=fxquant.MinMaxObserver)
    assert FLOAT.is_float and not Q8.is_float


@pytest.mark.parametrize(
    "setter, act_bits, fixed",
    [
        (fxquant.default_calibration_qconfig_setter, 8, False),
        (fxquant.default_qat_qconfig_setter, 8, False),
        (fxquant.default_qat_fixed_act_qconfig_setter, 8, True),
        (fxquant.calibration_8bit_weight_16bit_act_qconfig_setter, 16, False),
        (fxquant.qat_8bit_weight_16bit_act_qconfig_setter, 16, False),
        (fxquant.qat_8bit_weight_16bit_fixed_act_qconfig_setter, 16, True),
    ],
)
def test_templates(setter, act_bits, fixed):
    q = setter(op("conv"), CTX)
    assert q.weight.arg("dtype") == qint8 and q.weight.arg("ch_axis") == 0
    assert q.output.arg("dtype").bits == act_bits
    assert q.output.arg("fixed_in_qat") is fixed
    assert setter(op("add", OpKind.COMPUTE), CTX).weight is None
    assert setter(op("x", OpKind.FLOAT), CTX) is None


def test_templates_follow_backend_profile():
    x86 = SetterContext(profile=get_profile("x86"))
    q = fxquant.default_qat_qconfig_setter(op("conv"), x86)
    assert q.output.arg("dtype").qmax == 127 and not q.output.arg("dtype").signed
    assert q.output.arg("symmetric") is False
    qn = fxquant.default_qat_qconfig_setter(op("conv"), SetterContext(get_profile("qnnpack")))
    assert qn.weight.arg("ch_axis") is None


class GridNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Conv2d(3, 4, 3, padding=1)
        self.offset = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        grid = torch.tanh(self.offset(x)).permute(0, 2, 3, 1)
        return F.grid_sample(self.feat(x), grid, align_corners=False)


def test_default_template_uses_int16_on_grid_sample_grid_path():
    q = fxquant.prepare(GridNet(), torch.randn(1, 3, 8, 8))
    rows = {(r.name, r.role): r for r in fxquant.summary(q).quantizers}
    assert rows[("_generated_tanh_0", "output")].dtype == "qint16"
    assert rows[("offset", "output")].dtype == "qint16"
    assert rows[("feat", "output")].dtype == "qint8"
    assert rows[("_generated_grid_sample_0", "output")].dtype == "qint8"
