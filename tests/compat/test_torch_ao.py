"""fxquant.compat.torch_ao: torch's eager / FX tutorials with only the import changed, against
the real torch.ao (tests only) and fxquant's native API on the same model."""

from __future__ import annotations

import contextlib
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
import fxquant.compat.torch_ao as tq
from fxquant.compat.torch_ao import quantize_fx as tq_fx
from fxquant.compat.torch_ao.nn import quantized as tq_nnq
from fxquant.graph import get_report

ao = pytest.importorskip("torch.ao.quantization")
ao_fx = pytest.importorskip("torch.ao.quantization.quantize_fx")
ao_nnq = pytest.importorskip("torch.ao.nn.quantized")


@contextlib.contextmanager
def _engine(name: str):
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.backends.quantized.engine = old


def _eager_model(ns, nnq):
    """The eager tutorial's kind of model, built from namespace ``ns`` (torch.ao or compat)."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = ns.QuantStub()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.relu2 = nn.ReLU()
            self.skip = nnq.FloatFunctional()
            self.fc = nn.Linear(8 * 6 * 6, 10)
            self.dequant = ns.DeQuantStub()

        def forward(self, x):
            x = self.relu(self.bn(self.conv(self.quant(x))))
            x = self.skip.add(self.relu2(self.conv2(x)), x)
            return self.dequant(self.fc(torch.flatten(x, 1)))

    torch.manual_seed(0)
    m = M()
    with torch.no_grad():  # non-trivial BN statistics
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _minmax_qconfig(ns):
    return ns.QConfig(activation=ns.MinMaxObserver.with_args(reduce_range=True),
                      weight=ns.default_per_channel_weight_observer)


def _data(n=4):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 6, 6, generator=g) for _ in range(n)]


def _eager_ptq(ns, nnq, qconfig):
    """torch's eager static quantization tutorial, namespace ``ns``."""
    model_fp32 = _eager_model(ns, nnq)
    model_fp32.qconfig = qconfig
    fused = ns.fuse_modules(model_fp32, [["conv", "bn", "relu"], ["conv2", "relu2"]])
    prepared = ns.prepare(fused)
    for x in _data():
        prepared(x)
    return ns.convert(prepared), prepared


def _steps(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    return float(((a - b).abs() / scale).max())


def test_eager_ptq_matches_torch_ao_within_one_step_and_native_bit_exactly():
    x = _data(5)[4]
    with _engine("x86"):
        ao_int8, _ = _eager_ptq(ao, ao_nnq, _minmax_qconfig(ao))
        fx_int8, prepared = _eager_ptq(tq, tq_nnq, _minmax_qconfig(tq))
        assert isinstance(fx_int8, fxquant.ConvertedModel) and fx_int8.engine == "x86"
        gm = tq.prepared_module(prepared)
        out_scale = float(gm.fc.output_fake_quant.qparams().scale)
        ref = ao_int8(x)
        got = fx_int8(x)
        assert _steps(got, ref, out_scale) <= 1.0 + 1e-4
        # native fxquant on the same model: identical int8 outputs
        float_model = tq.fuse_modules(_eager_model(tq, tq_nnq),
                                      [["conv", "bn", "relu"], ["conv2", "relu2"]])
        native = fxquant.prepare(float_model, x, tq.to_fxquant_qconfig(_minmax_qconfig(tq)),
                                 backend="x86")
        fxquant.calibrate(native, _data(), progress=False)
        assert torch.equal(fxquant.convert(native, backend="x86")(x), got)
    assert not fx_int8.float_ops


def test_eager_default_qconfig_histogram_runs_and_is_close_to_torch_ao():
    x = _data(5)[4]
    with _engine("x86"):
        ao_int8, _ = _eager_ptq(ao, ao_nnq, ao.get_default_qconfig("x86"))
        fx_int8, _ = _eager_ptq(tq, tq_nnq, tq.get_default_qconfig("x86"))
        ref_float = _eager_model(tq, tq_nnq)(x)
        sqnr = [float(10 * torch.log10(ref_float.pow(2).sum() / (o - ref_float).pow(2).sum()))
                for o in (ao_int8(x), fx_int8(x))]
    assert sqnr[1] > 25 and sqnr[1] >= sqnr[0] - 3, sqnr


def test_eager_qat_trains_the_parameters_the_optimizer_holds_and_converts():
    data = _data(3)
    with _engine("x86"):
        def run(ns, nnq):
            torch.manual_seed(0)
            m = _eager_model(ns, nnq).train()
            m.fuse = None
            m = ns.fuse_modules_qat(m, [["conv", "bn", "relu"], ["conv2", "relu2"]])
            m.qconfig = ns.get_default_qat_qconfig("x86")
            opt = torch.optim.SGD(m.parameters(), lr=0.05)  # before prepare_qat (tutorial)
            ns.prepare_qat(m, inplace=True)
            before = m.conv2.weight.detach().clone()
            for i, xb in enumerate(data):
                loss = m(xb).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                if i == 1:
                    m.apply(ns.disable_observer)
                    m.apply(ns.freeze_bn_stats)
            m.eval()
            return m, before
        m, before = run(tq, tq_nnq)
        assert not torch.equal(m.conv2.weight, before)  # the optimizer trained the QAT model
        gm = tq.prepared_module(m)
        assert all(q.state is fxquant.FakeQuantState.VALIDATION
                   for q in gm.modules() if isinstance(q, fxquant.FakeQuantize))
        int8 = tq.convert(m)
        x = _data(5)[4]
        sim = gm(x)
        scale = float(gm.fc.output_fake_quant.qparams().scale)
        assert _steps(int8(x), sim, scale) <= 1.0 + 1e-4
        # the state dict round-trips into a fresh prepared model (strict)
        fresh, _ = run(tq, tq_nnq)
        tq.prepared_module(fresh).load_state_dict(gm.state_dict())


def _fx_model():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8 * 6 * 6, 10)

        def forward(self, x):
            x = F.relu(self.bn(self.conv(x)))
            x = F.relu(self.conv2(x)) + x
            return self.fc(torch.flatten(x, 1))

    torch.manual_seed(0)
    return Net().eval()


def test_fx_ptq_matches_torch_ao_within_one_step():
    x = _data(5)[4]
    with _engine("x86"):
        outs = []
        for ns, fxns in ((ao, ao_fx), (tq, tq_fx)):
            mapping = ns.QConfigMapping().set_global(_minmax_qconfig(ns))
            prepared = fxns.prepare_fx(copy.deepcopy(_fx_model()), mapping, (x,))
            for xb in _data():
                prepared(xb)
            outs.append(fxns.convert_fx(prepared)(x))
        scale = float(prepared.fc.output_fake_quant.qparams().scale)
        assert _steps(outs[1], outs[0], scale) <= 1.0 + 1e-4
        # the default mapping (histogram observers) prepares and converts too
        p = tq_fx.prepare_fx(_fx_model(), tq.get_default_qconfig_mapping("x86"), (x,))
        p(x)
        assert tq_fx.convert_fx(p)(x).shape == (8, 10)


def test_qconfig_mapping_precedence_and_float_ops():
    x = _data(1)[0]
    q = _minmax_qconfig(tq)
    mapping = (tq.QConfigMapping().set_global(q).set_object_type(nn.Linear, None)
               .set_module_name("conv2", None))
    with _engine("x86"):
        gm = tq_fx.prepare_fx(_fx_model(), mapping, (x,))
    ops = get_report(gm).ops
    assert "weight" not in ops["fc"].quantizers and "weight" not in ops["conv2"].quantizers
    assert "weight" in ops["conv"].quantizers
    mapping.set_module_name("fc", q)  # module name beats object type
    with _engine("x86"):
        gm = tq_fx.prepare_fx(_fx_model(), mapping, (x,))
    assert "weight" in get_report(gm).ops["fc"].quantizers


def test_engine_setting_picks_the_profile():
    x = _data(1)[0]
    with _engine("qnnpack"):
        gm = tq_fx.prepare_fx(_fx_model(), tq.get_default_qconfig_mapping("qnnpack"), (x,))
        gm(x)
        assert get_report(gm).profile.name == "qnnpack"
        assert tq_fx.convert_fx(gm).engine == "qnnpack"
        assert gm.conv2.weight_fake_quant.ch_axis is None  # qnnpack: per-tensor weights


def test_observers_answer_torch_ao_qparams():
    x = torch.linspace(-1.0, 3.0, 101)
    mine = tq.MinMaxObserver(dtype=torch.quint8, reduce_range=True)
    ref = ao.MinMaxObserver(dtype=torch.quint8, reduce_range=True)
    mine(x)
    ref(x)
    (s1, z1), (s2, z2) = mine.calculate_qparams(), ref.calculate_qparams()
    assert torch.allclose(s1, s2, rtol=1e-6) and int(z1) == int(z2)
    pc = tq.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8,
                                     qscheme=torch.per_channel_symmetric)
    pc(torch.randn(4, 9))
    s, z = pc.calculate_qparams()
    assert s.shape == (4,) and not z.any()
    with pytest.raises(fxquant.ConfigError, match="quant_min"):
        tq.MinMaxObserver(quant_min=3, quant_max=100)
    with pytest.raises(fxquant.ConfigError, match="dynamic"):
        tq.quantize_dynamic(nn.Linear(2, 2), {nn.Linear}, dtype=torch.qint8)
    with pytest.raises(fxquant.ConfigError, match="with_args"):
        tq.QConfig(activation=tq.MinMaxObserver(), weight=None)


def test_fuse_modules_folds_bn_in_eval_and_keeps_it_for_qat():
    m = _eager_model(tq, tq_nnq)
    x = _data(1)[0]
    fused = tq.fuse_modules(m, [["conv", "bn", "relu"]])
    assert isinstance(fused.conv, tq.FusedModule) and isinstance(fused.bn, nn.Identity)
    assert "conv.0.weight" in fused.state_dict() and len(fused.conv) == 2
    with torch.no_grad():
        assert torch.allclose(fused(x), m(x), atol=1e-5)
    with pytest.raises(fxquant.ConfigError, match="eval"):
        tq.fuse_modules(m.train(), [["conv", "bn"]])
    qat = tq.fuse_modules_qat(m.train(), [["conv", "bn", "relu"]])
    assert len(qat.conv) == 3
    with pytest.raises(fxquant.ConfigError, match="cannot fuse"):
        tq.fuse_modules(m.eval(), [["conv", "conv2"]])


# -- torch's static quantization tutorial (MobileNetV2 blocks): in-place prepare / convert,
# fuse_model with Sequential indices, torch's own nn.quantized.FloatFunctional, QAT with the
# optimizer built before prepare_qat, model.apply(disable_observer / freeze_bn_stats)
class ConvBNReLU(nn.Sequential):
    def __init__(self, i, o, k=3, s=1, groups=1):
        super().__init__(nn.Conv2d(i, o, k, s, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(o, momentum=0.1), nn.ReLU(inplace=False))

class InvertedResidual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Sequential(ConvBNReLU(c, 2 * c, 1), ConvBNReLU(2 * c, 2 * c, groups=2 * c),
                                  nn.Conv2d(2 * c, c, 1, 1, 0, bias=False), nn.BatchNorm2d(c))
        self.skip_add = nn.quantized.FloatFunctional()   # torch's own, untouched
    def forward(self, x):
        return self.skip_add.add(x, self.conv(x))

class TutorialNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(ConvBNReLU(3, 8, s=2), InvertedResidual(8),
                                      InvertedResidual(8))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(8, 10))
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
    def forward(self, x):
        x = self.features(self.quant(x))
        x = x.mean([2, 3])
        return self.dequant(self.classifier(x))
    def fuse_model(self, is_qat=False):
        fuse = tq.fuse_modules_qat if is_qat else tq.fuse_modules
        for m in self.modules():
            if type(m) is ConvBNReLU:
                fuse(m, ['0', '1', '2'], inplace=True)
            if type(m) is InvertedResidual:
                for idx in range(len(m.conv)):
                    if type(m.conv[idx]) is nn.Conv2d:
                        fuse(m.conv, [str(idx), str(idx + 1)], inplace=True)



def test_static_quantization_tutorial_in_place_flows():
    torch.manual_seed(0)
    data = [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))) for _ in range(3)]

    def evaluate(model):
        model.eval()
        with torch.no_grad():
            return [model(x) for x, _ in data]

    float_model = TutorialNet().eval()
    ref = evaluate(float_model)
    with _engine("x86"):
        my = copy.deepcopy(float_model).eval()
        my.fuse_model()
        my.qconfig = tq.default_qconfig
        tq.prepare(my, inplace=True)
        evaluate(my)
        tq.convert(my, inplace=True)
        out = evaluate(my)[0]
        assert 10 * torch.log10(ref[0].pow(2).sum() / (out - ref[0]).pow(2).sum()) > 25
        qat = copy.deepcopy(float_model)
        qat.fuse_model(is_qat=True)
        opt = torch.optim.SGD(qat.parameters(), lr=0.0001)
        qat.qconfig = tq.get_default_qat_qconfig("x86")
        tq.prepare_qat(qat, inplace=True)
        for epoch in range(2):
            qat.train()
            for x, y in data:
                loss = nn.functional.cross_entropy(qat(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            qat.apply(tq.disable_observer if epoch else tq.freeze_bn_stats)
        int8 = tq.convert(qat.eval(), inplace=False)
        gm = tq.prepared_module(qat)
        with torch.no_grad():
            sim = gm(data[0][0])
        scale = float(gm.get_submodule("classifier.1.output_fake_quant").qparams().scale)
        assert _steps(int8(data[0][0]), sim, scale) <= 1.0 + 1e-4
