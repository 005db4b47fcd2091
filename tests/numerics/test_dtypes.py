"""QDType grids, names and validation; granularity as data."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fxquant.numerics import (
    PerChannel,
    PerTensor,
    QDType,
    broadcast_param,
    dtype_by_name,
    granularity_from_axis,
    qint4,
    qint8,
    qint16,
    qint32,
    quint4,
    quint8,
    quint16,
)

NAMED = {
    "qint4": (qint4, -8, 7),
    "quint4": (quint4, 0, 15),
    "qint8": (qint8, -128, 127),
    "quint8": (quint8, 0, 255),
    "qint16": (qint16, -32768, 32767),
    "quint16": (quint16, 0, 65535),
    "qint32": (qint32, -(2**31), 2**31 - 1),
}
NARROW = {
    "qint4_narrow": (-7, 7),
    "quint4_narrow": (1, 15),
    "qint8_narrow": (-127, 127),
    "quint8_narrow": (1, 255),
    "qint16_narrow": (-32767, 32767),
    "quint16_narrow": (1, 65535),
    "qint32_narrow": (-(2**31) + 1, 2**31 - 1),
}


@pytest.mark.parametrize("name", list(NAMED))
def test_named_dtype_ranges(name):
    dtype, qmin, qmax = NAMED[name]
    assert (dtype.qmin, dtype.qmax) == (qmin, qmax)
    assert dtype.levels == qmax - qmin + 1 == 2**dtype.bits
    assert dtype.name == name and repr(dtype) == name
    assert not dtype.narrow_range


@pytest.mark.parametrize("name", list(NARROW))
def test_narrow_range(name):
    base = dtype_by_name(name.removesuffix("_narrow"))
    narrow = base.narrow()
    assert narrow.narrow_range and (narrow.qmin, narrow.qmax) == NARROW[name]
    assert narrow.levels == 2**base.bits - 1
    assert narrow.name == name
    assert narrow.narrow(False) == base and base.narrow(False) is not narrow


@pytest.mark.parametrize("bits", range(2, 33))
@pytest.mark.parametrize("signed", [True, False])
def test_ranges_for_every_width(bits, signed):
    d = QDType(bits, signed)
    if signed:
        assert (d.qmin, d.qmax) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        assert d.narrow().qmin == -d.qmax  # symmetric grid
    else:
        assert (d.qmin, d.qmax) == (0, 2**bits - 1)
        assert d.narrow().qmin == 1
    assert d.narrow().qmax == d.qmax
    # every width has a name that parses back (x86's reduce-range quint7 included)
    assert dtype_by_name(d.name) == d and dtype_by_name(d.narrow().name) == d.narrow()


@pytest.mark.parametrize("name", list(NAMED) + list(NARROW))
def test_dtype_by_name_round_trip(name):
    d = dtype_by_name(name)
    assert d.name == name
    assert dtype_by_name(d.name) == d
    assert hash(dtype_by_name(name)) == hash(d)


@pytest.mark.parametrize(
    "bad", ["int8", "qint1", "qint33", "qint08", "quint8_wide", "", "qint8_narrow_narrow",
            "QINT8", "qint 8"]
)
def test_dtype_by_name_rejects_unknown(bad):
    with pytest.raises(ValueError, match="unknown quantized dtype"):
        dtype_by_name(bad)


@pytest.mark.parametrize("bits", [0, 1, -8, 33, 64, 8.0, "8", None])
def test_invalid_bits_raise(bits):
    with pytest.raises(ValueError, match="bits"):
        QDType(bits, True)


def test_qdtype_is_frozen_and_hashable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        qint8.bits = 4  # type: ignore[misc]
    assert {qint8, QDType(8, True), qint8.narrow()} == {qint8, qint8.narrow()}
    assert QDType(8, True) == qint8 and QDType(8, False) != qint8


def test_granularity_from_axis():
    assert granularity_from_axis(None) == PerTensor()
    assert granularity_from_axis(0) == PerChannel(0)
    assert granularity_from_axis(-1) == PerChannel(-1)
    assert granularity_from_axis(torch.tensor(2).item()) == PerChannel(2)
    assert PerChannel() == PerChannel(0) and PerChannel(1) != PerChannel(0)
    assert repr(PerTensor()) == "per_tensor" and repr(PerChannel(1)) == "per_channel(axis=1)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        PerChannel(0).axis = 1  # type: ignore[misc]


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_broadcast_param_along_axis(axis):
    x = torch.zeros(2, 3, 4)
    p = torch.arange(x.shape[axis], dtype=torch.float32)
    b = broadcast_param(p, x, axis)
    assert b.dim() == 3 and b.shape[axis] == x.shape[axis] and b.numel() == p.numel()
    assert torch.equal((x + b).movedim(axis, 0)[:, 0, 0], p)
    scalar = torch.tensor(2.0)
    assert broadcast_param(scalar, x, axis) is scalar and broadcast_param(p, x, None) is p
