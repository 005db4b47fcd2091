"""A prepared model's forward with activations fused with their quantizers
(:mod:`fxquant.graph.act_fusion`): relu / relu6 fused give the prepared graph's bits -- outputs,
every gradient, every parameter and buffer after optimizer steps, the statistics a calibration
collects -- for functions and modules, in place or not, with and without BN folding, observing
or frozen scales; and the prepared graph runs wherever the fused one would not be it (tracing,
a changed graph, hooks, NaN inputs)."""

from __future__ import annotations

import contextlib
import copy
import doctest

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.profiler import profile

import fxquant
from fxquant.fake_quant import FakeQuantize
from fxquant.graph import act_fusion
from fxquant.graph.act_fusion import fused_activations, unfused
from fxquant.numerics import native
from fxquant.observers import MinMaxObserver

from .models import ConvNetA, EagerStyleB


class Mixed(nn.Module):
    """Every activation spelling the fusion takes."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.act1 = nn.ReLU6()
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.act2 = nn.ReLU(inplace=True)
        self.c3 = nn.Conv2d(8, 8, 1)
        self.c4 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.act1(self.b1(self.c1(x)))
        x = self.act2(self.b2(self.c2(x)))
        y = F.relu6(self.c3(x))
        z = F.relu(self.c4(y), inplace=True)
        w = torch.relu(z + y)
        r = F.relu(w)
        return self.fc((r + r.mean()).mean((2, 3)))


def _train(model, batches, fused: bool):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    outs = []
    for x, y in batches:
        if fused:
            out = model(x)
        else:
            with unfused():
                out = model(x)
        loss = (out.flatten(1)[:, :1] - y[:, None]).square().mean() + out.mean()
        opt.zero_grad()
        loss.backward()
        outs.append(out.detach())
        outs.extend(p.grad.clone() for p in model.parameters() if p.grad is not None)
        opt.step()
    return outs


def _bits(t):
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def _assert_identical(a, b, what):
    assert len(a) == len(b), what
    for i, (u, v) in enumerate(zip(a, b, strict=True)):
        assert torch.equal(torch.isnan(u), torch.isnan(v)), f"{what}: NaN at {i}"
        keep = ~torch.isnan(u) if u.is_floating_point() else torch.ones_like(u, dtype=torch.bool)
        assert torch.equal(_bits(u)[keep], _bits(v)[keep]), f"{what}: tensor {i} differs"


MODELS = {"mixed": (Mixed, (3, 16, 16)), "convnet": (ConvNetA, (3, 16, 16)),
          "eager style": (EagerStyleB, (3, 8, 8))}
TEMPLATES = {"default": fxquant.default_qat_qconfig_setter,
             "fixed act": fxquant.default_qat_fixed_act_qconfig_setter}


@pytest.mark.parametrize("fold_bn", [True, False])
@pytest.mark.parametrize("template", list(TEMPLATES))
@pytest.mark.parametrize("name", list(MODELS))
def test_fused_training_is_the_prepared_graph_bit_for_bit(name, template, fold_bn):
    if not native.available():
        pytest.skip(f"native kernels unavailable: {native.why_unavailable()}")
    cls, shape = MODELS[name]
    torch.manual_seed(0)
    example = torch.randn(4, *shape)
    qat = fxquant.prepare(cls(), example, TEMPLATES[template], fold_bn=fold_bn)
    fxquant.calibrate(qat, [example * 2], progress=False)
    fxquant.set_fake_quantize(qat, fxquant.FakeQuantState.QAT)
    assert fused_activations(qat), "nothing to fuse: the test would not exercise the fusion"
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, *shape, generator=gen) * (1 + i),
                torch.randn(8, generator=gen)) for i in range(3)]
    a, b = copy.deepcopy(qat).train(), copy.deepcopy(qat).train()
    got, want = _train(a, batches, True), _train(b, batches, False)
    _assert_identical(got, want, f"{name} {template} fold_bn={fold_bn}")
    sa, sb = a.state_dict(), b.state_dict()
    _assert_identical([sa[k] for k in sa], [sb[k] for k in sa], "state_dict")


def test_only_activations_read_by_their_quantizer_alone_are_fused():
    qat = fxquant.prepare(Mixed(), torch.randn(2, 3, 16, 16))
    assert fused_activations(qat) == ["act1", "act2", "relu6", "relu", "relu_1", "relu_2"]
    relu = next(n for n in qat.graph.nodes if n.name == "relu_1")
    with qat.graph.inserting_after(relu):  # a second reader of the unquantized output
        qat.graph.call_function(torch.add, (relu, 0.0))
    qat.recompile()
    assert fused_activations(qat) == ["act1", "act2", "relu6", "relu", "relu_2"]


def test_nan_inputs_and_hooks_take_the_prepared_path():
    """A NaN reaching an activation, and a hook on a fused quantizer, give the bits and the
    hook calls of the prepared graph."""
    torch.manual_seed(0)  # frozen scales: an observer refuses NaN (ObserverError)
    qat = fxquant.prepare(Mixed(), torch.randn(2, 3, 16, 16),
                          fxquant.default_qat_fixed_act_qconfig_setter)
    fxquant.calibrate(qat, [torch.randn(4, 3, 16, 16)], progress=False)
    fxquant.set_fake_quantize(qat, fxquant.FakeQuantState.QAT)
    x = torch.randn(4, 3, 16, 16)
    x[0, 0, 3, 3] = float("nan")  # spreads through the convs of sample 0
    a, b = copy.deepcopy(qat).train(), copy.deepcopy(qat).train()
    seen = {"a": [], "b": []}
    for key, m in (("a", a), ("b", b)):
        fq = m.get_submodule("act1").output_fake_quant
        fq.register_forward_hook(lambda mod, inp, out, k=key: seen[k].append(inp[0].detach()))
    y = torch.randn(4)
    _assert_identical(_train(a, [(x, y)], True), _train(b, [(x, y)], False), "NaN batch")
    assert len(seen["a"]) == len(seen["b"]) == 1
    _assert_identical(seen["a"], seen["b"], "hooked quantizer input")


def test_a_recompiled_graph_is_followed_and_tracing_sees_the_prepared_graph():
    qat = fxquant.prepare(Mixed(), torch.randn(2, 3, 16, 16)).train()
    before = fused_activations(qat)
    for n in qat.graph.nodes:  # relu6 -> hardtanh(0, 6): same values, not fused
        if n.op == "call_function" and n.target is F.relu6:
            n.target = F.hardtanh
            n.args = (n.args[0], 0.0, 6.0)
    qat.recompile()
    after = fused_activations(qat)
    assert "relu6" in before and "relu6" not in after and len(after) == len(before) - 1
    plain = fxquant.prepare(ConvNetA(), torch.randn(2, 3, 16, 16)).train()  # no BN to trace
    assert fused_activations(plain)
    traced = _QuantizersAsLeaves().trace(plain)  # train mode: the prepared graph's own nodes
    targets = {n.target for n in traced.nodes if n.op == "call_function"}
    assert F.relu in targets


class _QuantizersAsLeaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, FakeQuantize) or super().is_leaf_module(m, qualname)


@pytest.mark.parametrize("observer", ["minmax", "default template"])
def test_fused_calibration_collects_the_prepared_graphs_statistics(observer):
    """Calibration (eval mode, no_grad): the fused graph's activations observed as they are
    written give every statistic and scale bit for bit, and evaluation the same outputs."""
    if not native.available():
        pytest.skip(f"native kernels unavailable: {native.why_unavailable()}")
    torch.manual_seed(0)
    setter = (fxquant.get_qconfig(observer=MinMaxObserver) if observer == "minmax"
              else fxquant.default_calibration_qconfig_setter)
    prepared = fxquant.prepare(Mixed(), torch.randn(2, 3, 16, 16), setter)
    gen = torch.Generator().manual_seed(2)
    data = [torch.randn(8, 3, 16, 16, generator=gen) * (1 + i) for i in range(3)]
    models = []
    for fused in (True, False):
        m = copy.deepcopy(prepared)
        with contextlib.nullcontext() if fused else unfused(), profile() as prof:
            fxquant.calibrate(m, data, progress=False)
            out = m.eval()(data[0])
        models.append((m.state_dict(), out))
        ran = any("act_observe" in e.key for e in prof.key_averages())
        assert ran == (fused and observer == "minmax")  # histograms: the observer's own pass
    (sa, oa), (sb, ob) = models
    _assert_identical([sa[k] for k in sa] + [oa], [sb[k] for k in sa] + [ob], observer)


def test_doctests():
    assert doctest.testmod(act_fusion, raise_on_error=True).attempted > 0
