"""QConfig as frozen data: specs inside, JSON round trip with a version; get_qconfig's fix_scale
vs fixed_scale; the nine template presets are one class."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import fxquant
from fxquant import CheckpointError, ConfigError, QConfig, get_qconfig
from fxquant.backends import get_profile
from fxquant.fake_quant import QuantizerSpec
from fxquant.numerics import qint8, qint16, quint8
from fxquant.qconfig import OpInfo, OpKind, SetterContext, TemplateQconfigSetter

QCONFIGS = {
    "default": get_qconfig(),
    "learnable": get_qconfig(learnable=True, symmetric=False, out_dtype=quint8),
    "fixed_scale": get_qconfig(out_dtype=qint16, weight_dtype=None, fixed_scale=0.03125),
    "fix_scale": get_qconfig(fix_scale=True, in_dtype=qint8, weight_per_channel=False),
    "float": fxquant.FLOAT,
    # x86's reduce-range activations are quint7 (a width without a preset name)
    "x86_template": fxquant.default_qat_qconfig_setter(
        OpInfo("conv", "Conv2d", OpKind.WEIGHTED, nn.Conv2d(3, 4, 3)),
        SetterContext(profile=get_profile("x86")),
    ),
}


@pytest.mark.parametrize("name", list(QCONFIGS))
def test_qconfig_round_trips_through_json(name):
    q = QCONFIGS[name]
    data = json.loads(json.dumps(q.to_dict()))
    assert data["format"] == "fxquant.qconfig" and data["version"] == 1
    assert QConfig.from_dict(data) == q


def test_qconfig_holds_specs_whatever_it_is_given():
    q = QConfig(weight=fxquant.FakeQuantize.with_args(ch_axis=0, is_weight=True),
                activation=fxquant.LearnableFakeQuantize)
    assert isinstance(q.weight, QuantizerSpec) and isinstance(q.output, QuantizerSpec)
    assert q.output.learnable and q.output == fxquant.LearnableFakeQuantize.with_args()
    with pytest.raises(CheckpointError, match="newer fxquant"):
        QConfig.from_dict({**q.to_dict(), "version": 99})
    with pytest.raises(CheckpointError, match=r"not an 'fxquant\.qconfig' dict"):
        QConfig.from_dict(q.output.to_dict())


def test_a_prepared_models_quantizers_describe_themselves():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2)).eval()
    x = torch.randn(2, 3, 6, 6)
    q = fxquant.prepare(model, x, QCONFIGS["learnable"])
    fxquant.calibrate(q, [x], progress=False)
    for m in q.modules():
        if isinstance(m, fxquant.FakeQuantize):
            spec = m.spec()
            assert QuantizerSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
            fresh = spec()
            fresh.load_state_dict(m.state_dict())
            assert torch.equal(fresh.qparams().scale, m.qparams().scale)


def test_fix_scale_is_a_flag_and_fixed_scale_a_number():
    keep = get_qconfig(fix_scale=True)
    assert keep.output.fixed_in_qat and keep.output.fixed_scale is None
    const = get_qconfig(fixed_scale=0.0625, out_dtype=qint16)
    assert const.output.fixed_scale == 0.0625 and const.output.dtype == qint16
    assert not const.output.fixed_in_qat  # independent of fix_scale
    both = get_qconfig(fix_scale=True, fixed_scale=0.0625)
    assert both.output.fixed_in_qat and both.output.fixed_scale == 0.0625
    with pytest.raises(ConfigError, match=r"fix_scale is a flag.*use fixed_scale=0\.0625"):
        get_qconfig(fix_scale=0.0625)
    with pytest.raises(ConfigError, match=r"fix_scale is a flag"):
        get_qconfig(True, True, True, True, "yes")
    for bad in (0.0, -1.0, float("nan"), float("inf"), 1e-50):
        with pytest.raises(ConfigError, match="scale"):
            get_qconfig(fixed_scale=bad)


def test_the_nine_presets_are_one_template_class():
    names = [n for n in fxquant.__all__ if n.endswith("_qconfig_setter")]
    assert len(names) == 9
    assert all(isinstance(getattr(fxquant, n), TemplateQconfigSetter) for n in names)
    ctx = SetterContext(profile=get_profile("generic"))
    conv = OpInfo("conv", "Conv2d", OpKind.WEIGHTED)
    preset = fxquant.sensitive_op_qat_8bit_weight_16bit_act_qconfig_setter
    with pytest.raises(ConfigError, match=r"call it with the table first"):
        preset(conv, ctx)
    setter = preset([["conv", "activation"], ["fc", "weight"]], topk=1)
    assert isinstance(setter, TemplateQconfigSetter) and setter.ops == {"conv"}
    assert setter(conv, ctx).output.dtype == qint16
    assert setter(OpInfo("fc", "Linear", OpKind.WEIGHTED), ctx) is None
    assert setter == TemplateQconfigSetter(preset.mode, act16=True, ops=frozenset({"conv"}))
