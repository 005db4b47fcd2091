"""convert() converts for the backend recorded at prepare time and warns on a mismatch."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import fxquant
from fxquant.convert import convert


def _calibrated(backend: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2)).eval()
    data = [torch.randn(4, 3, 6, 6) for _ in range(2)]
    q = fxquant.prepare(model, data[0], fxquant.default_calibration_qconfig_setter,
                        backend=backend)
    return fxquant.calibrate(q, data, progress=False)


@pytest.mark.parametrize("backend", ["x86", "qnnpack"])
def test_default_is_the_prepare_time_engine(backend):
    q = _calibrated(backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        converted = convert(q)
    assert converted.backend == backend and converted.engine == backend


def test_other_numerics_warn():
    q = _calibrated("x86")
    with pytest.warns(UserWarning, match=r"prepared for backend 'x86' but is converted for "
                                         r"'qnnpack'.*activation_dtype"):
        assert convert(q, "qnnpack").engine == "qnnpack"
    generic = _calibrated("generic")  # no torch engine: x86, with a warning
    with pytest.warns(UserWarning, match=r"prepared for backend 'generic'.*'x86'"):
        assert convert(generic).engine == "x86"
    with warnings.catch_warnings():  # fbgemm: the same numerics as x86, another engine
        warnings.simplefilter("error")
        assert convert(q, "fbgemm").engine == "fbgemm"
