"""Runtime kernels (:mod:`fxquant.runtime_math.kernels`) beyond what the ORT comparisons cover."""

from __future__ import annotations

import torch
from torch import nn

import fxquant
from fxquant.graph.simulate import runtime_simulation
from fxquant.numerics import native
from fxquant.runtime_math.kernels import FloatFunctionKernel


def test_float_function_lookup_is_the_function_on_every_element():
    """SiLU / Sigmoid on a quantized input: evaluated once per grid value and gathered --
    bit-identical to evaluating every element; an input off the grid computes every element."""
    torch.manual_seed(0)
    qmodel = fxquant.prepare(nn.Sequential(nn.Linear(8, 8), nn.SiLU()), torch.randn(2, 8),
                             backend="onnxruntime")
    fxquant.calibrate(qmodel, [torch.randn(64, 8)], progress=False)
    module, plan = runtime_simulation(qmodel)
    assert "Sigmoid*x" in plan.kernels.values()
    kernel = next(m for m in module.modules() if isinstance(m, FloatFunctionKernel))
    fq, fn = kernel.in_fq, kernel.fn
    sizes: list[int] = []
    kernel.fn = lambda t: (sizes.append(t.numel()), fn(t))[1]
    with torch.no_grad():
        x = fq(torch.randn(4096, 8) * 3)  # on the grid
        off = x + 1e-4  # off the grid
        with native.native_kernels(False):  # the table path
            want, want_off = fn(x), fn(off)
            assert torch.equal(kernel.compute(x), want)
            assert torch.equal(kernel.compute(off), want_off)
        # one evaluation per grid value (the table is built before the grid check), then, off
        # the grid, one per element
        assert sizes == [256, 256, x.numel()]
        if native.available():  # one native pass over every element: the same bits
            sizes.clear()
            assert torch.equal(kernel.compute(x), want)
            assert torch.equal(kernel.compute(off), want_off)
            assert sizes == [x.numel(), x.numel()]
            assert torch.equal(kernel.compute(x.t()), want.t())  # a view: the table path
