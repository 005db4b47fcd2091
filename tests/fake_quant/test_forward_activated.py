""":meth:`FakeQuantize.forward_activated`: a relu / relu6 and its output quantizer in one native
pass, bit for bit ``fq(act(x))`` -- values, gradients and the observer's state -- against the
same composition run op by op in pure torch (native kernels off: ``F.relu6`` / ``torch.relu``,
the Python observers and :func:`fxquant.numerics.fake_quantize_ste`).

Inputs of every length the vector loops and the thread split cut differently, with the values
where an implementation could differ at a random place: the activation's bounds and their
neighbours, +-0, +-inf, NaN (declined by the native observer; the fused operator hands a NaN
to the ATen operations, whose vector and scalar loops treat it differently).
"""

from __future__ import annotations

import doctest

import pytest
import torch
from tests.numerics.test_fast_paths import assert_same

from fxquant.fake_quant import FakeQuantize, LearnableFakeQuantize, activation
from fxquant.fake_quant.activation import RELU, RELU6
from fxquant.fake_quant.state import FakeQuantState
from fxquant.numerics import native, quint8
from fxquant.observers import MinMaxObserver, MovingAverageMinMaxObserver

SIZES = (1, 7, 16, 17, 63, 64, 65, 1000, 4097, 70001)
SPECIALS = {"bound": 6.0, "above": 6.000001, "below": 5.999999, "zero": 0.0, "-0.0": -0.0,
            "tiny": 1e-45, "-tiny": -1e-45, "inf": float("inf"), "-inf": float("-inf"),
            "nan": float("nan")}


def _batches():
    gen = torch.Generator().manual_seed(3)
    for n in SIZES:
        base = torch.randn(n, generator=gen) * 4 + 1
        yield f"n={n}", base
        pos = int(torch.randint(0, n, (), generator=gen))
        for name, value in SPECIALS.items():
            x = base.clone()
            x[pos] = value
            yield f"n={n} {name}", x


QUANTIZERS = {
    "moving average, affine": lambda: FakeQuantize(observer=MovingAverageMinMaxObserver,
                                                   symmetric=False, dtype=quint8),
    "min-max, symmetric": lambda: FakeQuantize(observer=MinMaxObserver),
    "frozen": lambda: FakeQuantize(observer=MinMaxObserver, fixed_in_qat=True),
    "learnable (falls back)": lambda: LearnableFakeQuantize(observer=MinMaxObserver),
}


def _run(fq, x, act, fused, g):
    xi = x.clone().requires_grad_()
    try:
        with native.native_kernels(fused):
            out = fq.forward_activated(xi, act) if fused else fq(act.apply(xi))
            node = out.grad_fn.name()
            out.backward(g)
    except Exception as exc:  # a NaN / inf range: the same refusal either way
        return type(exc).__name__, None, None, ""
    return "ok", out.detach(), xi.grad, node


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("act", [RELU, RELU6], ids=lambda a: a.name)
@pytest.mark.parametrize("kind", list(QUANTIZERS))
def test_forward_activated_is_the_composition_bit_for_bit(kind, act, threads):
    if not native.available():
        pytest.skip(f"native kernels unavailable: {native.why_unavailable()}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pair = [QUANTIZERS[kind](), QUANTIZERS[kind]()]
        warm = torch.linspace(-1.0, 5.0, 101)
        for fq in pair:  # a frozen scale comes from a calibration
            fq.set_state(FakeQuantState.CALIBRATION)
            fq(act.apply(warm))
            fq.set_state(FakeQuantState.QAT)
        gen = torch.Generator().manual_seed(5)
        nodes = set()
        for what, x in _batches():
            g = torch.randn(x.shape, generator=gen)
            g[::3] = -g[::3].abs()  # grad * 0.0 is -0.0 there
            (sa, oa, ga, node), (sb, ob, gb, _) = (
                _run(fq, x, act, fused, g) for fq, fused in zip(pair, (True, False), strict=True))
            nodes.add(node)
            assert sa == sb, what
            if oa is not None:
                assert_same(oa, ob, f"{kind} {act.name} {what} output")
                assert_same(ga, gb, f"{kind} {act.name} {what} gradient")
            a, b = pair
            for buf in ("min_val", "max_val"):
                assert_same(a.observer._buffers[buf], b.observer._buffers[buf], what + buf)
            assert_same(a.scale.detach(), b.scale.detach(), f"{what} scale")
            assert torch.equal(a.zero_point.detach(), b.zero_point.detach()), what
        fused = any("ActFakeQuantSTE" in n for n in nodes)
        assert fused == (kind != "learnable (falls back)"), nodes  # the pass under test ran
    finally:
        torch.set_num_threads(previous)


def test_a_gradient_that_requires_grad_gets_the_same_values():
    """create_graph=True: the backward runs as differentiable ATen operations."""
    fq_a, fq_b = FakeQuantize(), FakeQuantize()
    x = torch.randn(1000) * 5
    g = torch.randn(1000)
    grads = []
    for fq, fused in ((fq_a, True), (fq_b, False)):
        xi = x.clone().requires_grad_()
        out = fq.forward_activated(xi, RELU6) if fused else fq(RELU6.apply(xi))
        (gx,) = torch.autograd.grad(out, xi, g, create_graph=True)
        grads.append(gx.detach())
    assert_same(grads[0], grads[1], "gradient with create_graph")


def test_hooks_and_other_states_run_the_composition():
    """A quantizer with a forward hook sees the activation's output as its input, as in the
    prepared graph; FLOAT / CALIBRATION states return the activation's output."""
    fq = FakeQuantize()
    seen = []
    fq.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    x = (torch.randn(500) * 5).requires_grad_()
    fq.forward_activated(x, RELU6)
    assert len(seen) == 1
    assert_same(seen[0], RELU6.apply(x).detach(), "hooked input")
    for state in (FakeQuantState.FLOAT, FakeQuantState.CALIBRATION):
        plain = FakeQuantize()
        plain.set_state(state)
        assert_same(plain.forward_activated(x, RELU).detach(), torch.relu(x).detach(), state.name)


def test_doctests():
    assert doctest.testmod(activation, raise_on_error=True).attempted > 0
