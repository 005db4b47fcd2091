"""Messages stay bounded whatever the input: a hypothesis property over names of any length
and content, fed to the error sites that echo what the user gave."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fxquant
from fxquant.errors import MAX_MESSAGE, FxquantError
from fxquant.numerics import dtype_by_name

from .helpers import example

pytestmark = pytest.mark.timeout(300)

_NAMES = st.one_of(
    st.text(min_size=1, max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1000, max_size=5000),
    st.integers(1000, 200_000).map(lambda n: "layer." * (n // 6)),
)


def _prepare_sites(model):
    setter = fxquant.default_calibration_qconfig_setter
    return [
        lambda n: fxquant.prepare(model, example(), (fxquant.ModuleNameQconfigSetter(
            {n: fxquant.get_qconfig()}), setter)),
        lambda n: fxquant.prepare(model, example(), setter, leaf_modules=[n]),
        lambda n: fxquant.prepare(model, example(), n),
        lambda n: fxquant.prepare(model, {n: example()}, setter),
    ]


def _cheap_sites(qmodel):
    return [
        lambda n: fxquant.get_profile(n),
        lambda n: dtype_by_name(n),
        lambda n: fxquant.set_fake_quantize(qmodel, n),
        lambda n: fxquant.QConfig(output=n),
        lambda n: fxquant.get_qconfig(observer=n),
        lambda n: fxquant.FakeQuantize.with_args(dtype=n),
        lambda n: fxquant.FixedScaleObserver(scale=n),
        lambda n: fxquant.HistogramObserver(method=n),
        lambda n: fxquant.verify(qmodel, n, example(), runtime=n),
        lambda n: fxquant.export_encodings(qmodel, None, version=n),
        lambda n: fxquant.compare(None, qmodel, example(), stages=(n,)),
        lambda n: fxquant.sensitivity(qmodel, [example()], metric=n),
        lambda n: fxquant.calibrate(qmodel, [{n: example()}], progress=False),
    ]


def _bounded(site, name):
    try:
        site(name)
    except FxquantError as err:
        assert len(str(err)) <= MAX_MESSAGE, f"{len(str(err))} chars"
        return
    raise AssertionError("no fxquant error")


@settings(max_examples=25)
@given(name=_NAMES, which=st.integers(0, 12))
def test_messages_echoing_user_values_are_bounded(qmodel, name, which):
    sites = _cheap_sites(qmodel)
    _bounded(sites[which % len(sites)], name)


@settings(max_examples=12)
@given(name=_NAMES, which=st.integers(0, 3))
def test_prepare_messages_are_bounded(float_model, name, which):
    sites = _prepare_sites(float_model)
    _bounded(sites[which], name)


@settings(max_examples=10)
@given(length=st.integers(1, 10_000_000))
def test_a_huge_error_message_is_capped(length):
    # even an fxquant error built from a message of any length stays bounded
    err = fxquant.DataError("batch " + "x" * length)
    assert len(str(err)) <= MAX_MESSAGE and str(err).startswith("batch")


def test_model_and_input_descriptions_are_bounded(float_model):
    many = tuple(torch.randn(1) for _ in range(10_000))  # 10k positional inputs
    try:
        fxquant.prepare(float_model, many)
    except FxquantError as err:
        assert len(str(err)) <= MAX_MESSAGE
    else:
        raise AssertionError("no fxquant error")
