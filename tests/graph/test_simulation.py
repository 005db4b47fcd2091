"""fxquant.graph.simulate: which simulation a prepared model runs, and when.

Eval mode computes the profile's runtime arithmetic at every op of its fused-kernel table; train
mode, ``Simulation.FLOAT``, ``float_simulation()`` and tracing run the float simulation; kernels
whose quantizers are not settled fall back to the float op.  (Runtime vs ONNX Runtime itself:
``test_simulation_ort.py``.)
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx
from torch import nn

import fxquant
from fxquant import FakeQuantState, Simulation
from fxquant.errors import ConfigError
from fxquant.fake_quant import FakeQuantize
from fxquant.graph.simulate import SIMULATION_KEY

from ..export import models as M


def _settle_bn(model: nn.Module, shape: tuple[int, ...], steps: int = 3) -> nn.Module:
    """Give the BatchNorms real statistics and non-trivial affine parameters (non-zero folded
    biases: the int32 bias rounding matters)."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.3, 0.3, generator=gen)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(*shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = _settle_bn(M.ResNetSmall(), (16, 3, 16, 16))
    gen = torch.Generator().manual_seed(1)
    qmodel = fxquant.prepare(model, torch.randn(2, 3, 16, 16, generator=gen),
                             fxquant.default_calibration_qconfig_setter, backend="onnxruntime")
    fxquant.calibrate(qmodel, [torch.randn(16, 3, 16, 16, generator=gen) for _ in range(2)],
                      progress=False)
    return qmodel, torch.randn(32, 3, 16, 16, generator=gen)


def _float(qmodel: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), fxquant.simulation(qmodel, Simulation.FLOAT):
        return qmodel(x)


def _out_scale(qmodel: nn.Module) -> float:
    return float(qmodel.fc.output_fake_quant.scale)


def test_plan_lists_the_fused_kernels(resnet):
    qmodel, _ = resnet
    plan = fxquant.runtime_plan(qmodel)
    assert plan.runtime == "onnxruntime" and plan.skipped == {}
    counts: dict[str, int] = {}
    for k in plan.kernels.values():
        counts[k] = counts.get(k, 0) + 1
    assert counts == {"QLinearConv": 8, "QLinearAdd": 3, "QLinearGlobalAveragePool": 1,
                      "QGemm": 1}
    assert plan.kernels["layer1._generated_relu_1"] == "QLinearAdd"  # relu absorbed
    assert plan.kernels["fc"] == "QGemm"


def test_eval_runs_the_runtime_arithmetic_train_the_float_simulation(resnet):
    qmodel, x = resnet
    qmodel.eval()
    with torch.no_grad():
        runtime = qmodel(x)
    flt = _float(qmodel, x)
    steps = ((runtime - flt) / _out_scale(qmodel)).round()
    assert steps.abs().max() <= 2 and not torch.equal(runtime, flt)  # last-bit differences
    # train mode (quantizers frozen so that nothing observes): the float simulation, exactly
    # what the graph without the prologue computes
    plain_graph = fx.Graph()
    plain_graph.output(plain_graph.graph_copy(qmodel.graph, {}))
    plain = fx.GraphModule(qmodel, plain_graph)
    assert "fxquant_runtime_forward" in qmodel.code
    assert "fxquant_runtime_forward" not in plain.code
    try:
        qmodel.train()
        for m in qmodel.modules():  # BN in eval: folded weights, deterministic
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        with torch.no_grad():
            assert torch.equal(qmodel(x), plain(x))
            assert torch.equal(qmodel(x), flt)
    finally:
        qmodel.eval()


def test_switch_and_context_manager(resnet):
    qmodel, x = resnet
    qmodel.eval()
    with torch.no_grad():
        runtime = qmodel(x)
        flt = _float(qmodel, x)
        assert SIMULATION_KEY not in qmodel.meta  # the block restored the default
        switch = fxquant.simulation(qmodel, "float")  # a plain call switches until switched back
        assert torch.equal(qmodel(x), flt)
        with fxquant.simulation(qmodel, Simulation.RUNTIME):
            assert torch.equal(qmodel(x), runtime)
        assert torch.equal(qmodel(x), flt)
        switch.__exit__(None, None, None)
        assert torch.equal(qmodel(x), runtime)
        with fxquant.float_simulation():  # every model, for exporters
            assert torch.equal(qmodel(x), flt)
        assert torch.equal(qmodel(x), runtime)


def test_bad_switches_raise_config_errors(resnet):
    qmodel, _ = resnet
    with pytest.raises(ConfigError, match="FLOAT or RUNTIME"):
        fxquant.simulation(qmodel, "integer")
    generic = fxquant.prepare(M.OneConv(), torch.randn(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="'generic' names no runtime"):
        fxquant.simulation(generic, Simulation.RUNTIME)
    assert fxquant.runtime_plan(generic).kernels == {}
    with pytest.raises(ConfigError, match="prepare"):
        fxquant.simulation(nn.Linear(2, 2), Simulation.FLOAT)
    eager = fxquant.prepare(M.Branchy(), torch.randn(2, 3, 8, 8), backend="onnxruntime")
    with pytest.raises(ConfigError, match="captured eagerly"):
        fxquant.simulation(eager, Simulation.RUNTIME)
    with fxquant.simulation(eager, Simulation.FLOAT):
        pass
    assert "<model>" in fxquant.runtime_plan(eager).skipped


def test_kernels_fall_back_while_quantizers_are_not_settled(resnet):
    qmodel, x = resnet
    qmodel.eval()
    flt = _float(qmodel, x)
    with torch.no_grad():
        with fxquant.fake_quantize_state(qmodel, FakeQuantState.CALIBRATION):
            before = {k: v.clone() for k, v in qmodel.state_dict().items()}
            observed = qmodel(x)  # calibration in eval mode: float outputs
            with fxquant.simulation(qmodel, Simulation.FLOAT):
                assert torch.equal(observed, qmodel(x))
        for k, v in before.items():  # restore what CALIBRATION observed
            qmodel.state_dict()[k].copy_(v)
        fxquant.set_fake_quantize(qmodel, FakeQuantState.VALIDATION)
        # QAT that keeps observing: every kernel falls back to the float op
        fqs = [m for m in qmodel.modules() if isinstance(m, FakeQuantize)]
        saved = [(m, m.state) for m in fqs]
        for m in fqs:
            m.set_state_code(FakeQuantState.QAT)
            m.observer.eval()
        try:
            for m in fqs:  # observing would move the scales: look at the decision only
                assert not fxquant.runtime_math.settled(m) or m.fixed_in_qat
        finally:
            for m, code in saved:
                m.set_state_code(code)
        assert torch.equal(_float(qmodel, x), flt)


def test_tracing_sees_the_float_simulation(resnet):
    """fx tracing (like torch.export / torch.onnx.export / jit tracing, recognised by the
    prologue) records the plain fake-quant graph, never the runtime kernels."""
    qmodel, _ = resnet

    class LeafQuantizers(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            leaf = (FakeQuantize, fxquant.nn.ConvBnNd, fxquant.nn.QuantWeightMixin)
            return isinstance(m, leaf) or super().is_leaf_module(m, qualname)

    qmodel.eval()
    graph = LeafQuantizers().trace(qmodel)
    targets = {str(n.target) for n in graph.nodes if n.op == "call_module"}
    assert not any("_fxquant_kernel" in t for t in targets)
    assert "layer1.conv1" in targets


def test_deepcopy_and_state_dict(resnet):
    qmodel, x = resnet
    keys = set(qmodel.state_dict())
    assert not any("kernel" in k for k in keys)
    qmodel.eval()
    with torch.no_grad():
        runtime = qmodel(x)
    assert set(qmodel.state_dict()) == keys  # building the runtime graph adds nothing
    assert not any("_fxquant_kernel" in n for n, _ in qmodel.named_modules())
    twin = copy.deepcopy(qmodel)
    with torch.no_grad():
        assert torch.equal(twin.eval()(x), runtime)
    fxquant.simulation(twin, Simulation.FLOAT)
    triplet = copy.deepcopy(twin)
    assert triplet.meta[SIMULATION_KEY] is Simulation.FLOAT
    with torch.no_grad():
        assert torch.equal(triplet.eval()(x), _float(qmodel, x))


def test_runtime_graph_follows_the_model(resnet):
    """The runtime graph shares the model's quantizers (a new scale is used at once) and is
    rebuilt when a module is replaced."""
    qmodel, x = resnet
    model = copy.deepcopy(qmodel).eval()
    with torch.no_grad():
        before = model(x)
        fq = model.fc.output_fake_quant
        fq.scale.mul_(2.0)
        after = model(x)
        assert not torch.equal(before, after)
        assert torch.equal(after, _float(model, x)) or \
            ((after - _float(model, x)) / float(fq.scale)).round().abs().max() <= 2
        fq.scale.div_(2.0)
        float_fc = fxquant.nn.QuantLinear.from_float(nn.Linear(32, 10), None)
        float_fc.output_fake_quant = fq
        model.fc = float_fc
        plan = fxquant.runtime_plan(model)
        assert "fc" not in plan.kernels and "fc" in plan.skipped
        assert "not quantized" in plan.skipped["fc"]


def test_sixteen_bit_ops_stay_float():
    setter = fxquant.ModuleNameQconfigSetter({"fc": fxquant.get_qconfig(
        out_dtype=fxquant.qint16)})
    x = torch.randn(4, 16)
    qmodel = fxquant.prepare(M.OneLinear(), x, (setter, fxquant.default_calibration_qconfig_setter),
                             backend="onnxruntime")
    fxquant.calibrate(qmodel, [torch.randn(16, 16)], progress=False)
    plan = fxquant.runtime_plan(qmodel)
    assert plan.kernels == {} and "16-bit" in plan.skipped["fc"]


def test_algorithms_that_hook_layers_run_the_float_simulation(resnet):
    """Bias correction measures through its layers' forward hooks, which the runtime graph does
    not call: it runs the float simulation, for an onnxruntime-profile model as for any other."""
    qmodel, x = resnet
    model = copy.deepcopy(qmodel)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fxquant.bias_correction(model, [x[:16], x[16:]], progress=False)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed and all(k.endswith("bias") for k in changed)


def test_docstring_examples_run():
    import doctest
    import importlib

    module = importlib.import_module("fxquant.graph.simulate")
    assert doctest.testmod(module, raise_on_error=True).attempted > 0
