"""QuantizerSpec: frozen, validated, JSON round trip; FakeQuantize.spec() rebuilds a quantizer."""

from __future__ import annotations

import json
import math

import pytest
import torch

import fxquant
from fxquant import CheckpointError, ConfigError
from fxquant.fake_quant import SPEC_VERSION, QuantizerSpec
from fxquant.numerics import ScaleMath, qint4, qint8, qint16, quint8
from fxquant.observers import (
    FixedScaleObserver,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    Observer,
    ObserverSpec,
    PercentileObserver,
)

SPECS = {
    "default": fxquant.FakeQuantize.with_args(),
    "affine_ma": fxquant.FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver.with_args(averaging_constant=0.25),
        dtype=quint8, symmetric=False),
    "per_channel_weight": fxquant.FakeQuantize.with_args(ch_axis=0, is_weight=True, dtype=qint4,
                                                         scale_math=ScaleMath.RECIPROCAL),
    "histogram": fxquant.FakeQuantize.with_args(observer=HistogramObserver, method="mse",
                                                bins=256, power_of_two=True),
    "percentile": fxquant.FakeQuantize.with_args(observer=PercentileObserver.with_args(
        percentile=99.5), fixed_in_qat=True),
    "mse_int16": fxquant.FakeQuantize.with_args(observer=MSEObserver, dtype=qint16),
    "fixed": fxquant.FakeQuantize.with_args(observer=FixedScaleObserver.with_args(
        scale=0.0625, dtype=qint16, zero_point=3), dtype=qint16, symmetric=False),
    "learnable": fxquant.LearnableFakeQuantize.with_args(symmetric=False, ch_axis=1,
                                                         eps=1e-6),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_spec_round_trips_through_json(name):
    spec = SPECS[name]
    assert isinstance(spec, QuantizerSpec)
    data = json.loads(json.dumps(spec.to_dict()))  # plain JSON values only
    assert data["version"] == SPEC_VERSION and data["format"] == "fxquant.quantizer"
    again = QuantizerSpec.from_dict(data)
    assert again == spec and hash(again) == hash(spec)


@pytest.mark.parametrize("name", list(SPECS))
def test_fake_quantize_spec_rebuilds_an_identical_quantizer(name):
    src = SPECS[name]()
    x = torch.randn(4, 6, 5) * 3
    src(x)  # QAT: observe + fake-quantize
    spec = src.spec()
    assert spec == SPECS[name]
    fresh = spec()
    assert type(fresh) is type(src)
    fresh.load_state_dict(src.state_dict())
    for q in (src, fresh):
        q.set_state(fxquant.FakeQuantState.VALIDATION)
    y = torch.randn(4, 6, 5) * 3
    assert torch.equal(fresh(y), src(y))
    assert fresh.qparams().scale.equal(src.qparams().scale)


def test_with_args_on_a_spec_reaches_the_observer():
    spec = fxquant.FakeQuantize.with_args(observer=MovingAverageMinMaxObserver)
    assert spec.with_args(averaging_constant=0.5)().observer.averaging_constant == 0.5
    assert spec.arg("dtype") == qint8 and spec.arg("missing", 7) == 7
    assert spec(dtype=quint8).dtype == quint8 and spec().dtype == qint8
    with pytest.raises(ConfigError, match=r"averaging_constant must be in \(0, 1\]"):
        spec.with_args(averaging_constant=3.0)
    with pytest.raises(ConfigError, match=r"unknown argument.*'bins'.*averaging_constant"):
        spec.with_args(bins=64)


def test_dtype_defaults_to_the_fixed_observers():
    spec = QuantizerSpec(observer=FixedScaleObserver.with_args(scale=0.5, dtype=quint8))
    assert spec.dtype == quint8 and spec.fixed_scale == 0.5
    assert QuantizerSpec().dtype == qint8 and QuantizerSpec().fixed_scale is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dtype": "qint8"}, r"dtype must be a QDType"),
        ({"ch_axis": 1.0}, r"ch_axis must be None .* or an int"),
        ({"ch_axis": True}, r"ch_axis"),
        ({"symmetric": 1}, r"symmetric must be True or False"),
        ({"learnable": "yes"}, r"learnable must be True or False"),
        ({"scale_math": "round"}, r"scale_math must be a ScaleMath"),
        ({"eps": 0.0}, r"eps must be a finite positive scale within float32"),
        ({"eps": float("nan")}, r"eps"),
        ({"eps": 1e300}, r"eps"),
        ({"observer": torch.nn.ReLU}, r"observer must be an Observer"),
        ({"observer": FixedScaleObserver.with_args(scale=-0.1)}, r"fixed scale.*finite positive"),
        ({"observer": FixedScaleObserver.with_args(scale=math.inf)},
         r"FixedScaleObserver: fixed scale must be a finite positive"),
        ({"observer": FixedScaleObserver.with_args(scale=1e-60)}, r"within float32"),
        ({"observer": FixedScaleObserver.with_args(scale=0.5, dtype=quint8), "dtype": qint8},
         r"fixed scale is meant for quint8 .* dtype is qint8"),
        ({"observer": HistogramObserver.with_args(bins=100)}, r"bins must be a power of two"),
        ({"observer": PercentileObserver.with_args(percentile=120)}, r"percentile"),
    ],
)
def test_invalid_specs_raise_config_error_naming_the_argument(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        QuantizerSpec(**kwargs)


def test_bit_widths_are_validated_by_the_dtype():
    with pytest.raises(ValueError, match="bits"):
        fxquant.QDType(40, True)
    assert QuantizerSpec(dtype=fxquant.QDType(3, True)).to_dict()["dtype"] == "qint3"


def test_from_dict_refuses_newer_versions_and_other_data():
    data = SPECS["affine_ma"].to_dict()
    with pytest.raises(CheckpointError, match=r"newer fxquant \(format version 2; .* up to 1\)"):
        QuantizerSpec.from_dict({**data, "version": SPEC_VERSION + 1})
    with pytest.raises(CheckpointError, match=r"not an 'fxquant\.quantizer' dict"):
        QuantizerSpec.from_dict({**data, "format": "something else"})
    with pytest.raises(CheckpointError, match="bad format version"):
        QuantizerSpec.from_dict({**data, "version": "1"})
    with pytest.raises(CheckpointError, match="unknown keys 'colour'"):
        QuantizerSpec.from_dict({**data, "colour": "red"})
    with pytest.raises(CheckpointError, match="unknown observer type 'Spy'"):
        QuantizerSpec.from_dict({**data, "observer": {"type": "Spy", "args": {}}})
    with pytest.raises(CheckpointError, match="unknown quantized dtype"):
        QuantizerSpec.from_dict({**data, "dtype": "qint99"})
    with pytest.raises(CheckpointError, match="eps"):
        QuantizerSpec.from_dict({**data, "eps": -1.0})
    with pytest.raises(CheckpointError):
        QuantizerSpec.from_dict(["not", "a", "dict"])


class _MyObserver(MinMaxObserver):
    pass


def test_custom_types_build_but_do_not_serialise():
    spec = QuantizerSpec(observer=_MyObserver)
    assert isinstance(spec().observer, _MyObserver)
    with pytest.raises(ConfigError, match="_MyObserver is not one of fxquant's"):
        spec.to_dict()

    class MyQuantizer(fxquant.FakeQuantize):
        pass

    factory = MyQuantizer.with_args(dtype=quint8)  # a plain factory, as before
    assert not isinstance(factory, QuantizerSpec) and isinstance(factory(), MyQuantizer)


def test_observer_specs_are_canonical():
    a = ObserverSpec.of(MovingAverageMinMaxObserver(averaging_constant=0.5, ch_axis=1))
    b = ObserverSpec.from_factory(MovingAverageMinMaxObserver.with_args(averaging_constant=0.5))
    assert a == b and a.args == (("averaging_constant", 0.5),)
    assert ObserverSpec.of(HistogramObserver()) == ObserverSpec(HistogramObserver)
    assert ObserverSpec.of(MinMaxObserver(ch_axis=0)).to_dict() == {"type": "MinMaxObserver",
                                                                     "args": {}}
    assert issubclass(ObserverSpec().type, Observer)
