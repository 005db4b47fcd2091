"""Backend profiles: defaults per target and activation placement."""

from __future__ import annotations

import dataclasses
import doctest
import json

import pytest
import torch
from torch import nn

import fxquant
from fxquant.backends import PROFILES, BackendProfile, Placement, get_profile, profiles

from ..graph.models import ConvNetA


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.relu(self.conv1(x))
        y = self.conv2(y) + x
        return self.fc(self.pool(y).flatten(1))


def rows(q):
    return {(r.name, r.role): r for r in fxquant.summary(q).quantizers}


def test_profiles_are_data_and_validated():
    assert {"generic", "x86", "fbgemm", "qnnpack", "onnxruntime", "tensorrt"} <= set(PROFILES)
    with pytest.raises(ValueError, match="unknown backend"):
        get_profile("tpu9000")
    with pytest.raises(TypeError):
        dataclasses.replace(PROFILES["generic"], placement="outputs")


def test_x86_profile_quint8_reduce_range_and_per_channel():
    q = fxquant.prepare(ConvNetA(), torch.randn(1, 3, 16, 16), backend="x86")
    fxquant.calibrate(q, [torch.randn(2, 3, 16, 16)], progress=False)
    r = rows(q)
    act = q.get_submodule(r[("x", "output")].path)
    assert (act.dtype.qmin, act.dtype.qmax, act.symmetric) == (0, 127, False)
    w = q.get_submodule(r[("conv1", "weight")].path)
    assert w.dtype == fxquant.qint8 and w.ch_axis == 0 and w.symmetric
    assert w.scale_math is fxquant.ScaleMath.RECIPROCAL


def test_tensorrt_placement_inputs_of_weighted_ops_and_both_add_inputs():
    model = Residual().eval()
    q = fxquant.prepare(model, torch.randn(1, 4, 8, 8), backend="tensorrt")
    r = rows(q)
    outs = {n for n, role in r if role == "output"}
    # x feeds conv1 and the add; relu output feeds conv2; conv2 output feeds the add;
    # pool output feeds fc.  No quantizer on the add or the fc output.
    assert outs == {"x", "relu", "conv2", "pool"}
    for role_name in ("conv1", "conv2", "fc"):
        w = q.get_submodule(r[(role_name, "weight")].path)
        assert w.dtype.narrow_range and w.symmetric and w.ch_axis == 0
    for n in outs:
        fq = q.get_submodule(r[(n, "output")].path)
        assert fq.symmetric and fq.dtype == fxquant.qint8
    assert get_profile("tensorrt").placement is Placement.WEIGHTED_INPUTS


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profiles_round_trip_through_json(name):
    profile = PROFILES[name]
    data = json.loads(json.dumps(profile.to_dict()))
    assert BackendProfile.from_dict(data) == profile
    custom = dataclasses.replace(profile, name="mine", weight_dtype=fxquant.qint4.narrow(),
                                 float_input_ops=frozenset({"softmax", "mean"}))
    assert BackendProfile.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom
    # a profile saved before a field existed takes the field's default
    old = {k: v for k, v in data.items() if k != "max_qdq_bits"}
    assert BackendProfile.from_dict(old).max_qdq_bits == 16


@pytest.mark.parametrize("change, match", [
    ({"placement": "everywhere"}, "not a valid Placement"),
    ({"activation_dtype": "qint99"}, "unknown quantized dtype"),
    ({"int32_bias": 1}, "int32_bias must be true or false"),
    ({"float_input_ops": "softmax"}, "float_input_ops must be a list"),
    ({"max_qdq_bits": "8"}, "max_qdq_bits must be an int"),
    ({"colour": "red"}, "unknown fields 'colour'"),
    ({"kernels": "QLinearConv"}, "kernels must be a list"),
    ({"kernels": [{"op": "spin", "kernel": "X"}]}, "not a valid KernelOp"),
    ({"kernels": [{"op": "conv", "kernel": "X", "max_bits": "8"}]}, "max_bits an int"),
    ({"fixed_outputs": [{"op_types": ["softmax"], "bits": 8}]}, "a fixed output grid is"),
    ({"same_grid_ops": "avgpool2d"}, "same_grid_ops must be a list"),
])
def test_profile_from_bad_dict_raises_checkpoint_error(change, match):
    data = {**PROFILES["generic"].to_dict(), **change}
    with pytest.raises(fxquant.CheckpointError, match=match):
        BackendProfile.from_dict(data)
    with pytest.raises(fxquant.CheckpointError, match="expected a dict"):
        BackendProfile.from_dict(["generic"])


def test_doctests():
    assert doctest.testmod(profiles, raise_on_error=True).attempted > 0
