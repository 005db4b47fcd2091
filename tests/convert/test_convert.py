"""convert: prepared + calibrated models -> torch quantized engines (x86 / fbgemm / qnnpack).

The converted model must agree with fxquant's simulation (the prepared model in VALIDATION) to
within one quantization step of the final output quantizer on >= 99% of the elements, really
consist of torch quantized modules, and leave the prepared model untouched.
"""

from __future__ import annotations

import copy
import operator

import pytest
import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant.convert import ConvertedModel, ConvertError, Execution, convert, summary
from fxquant.convert.qparams import (
    activation_qparams,
    quantized_engine,
    quantized_weight,
    silence_deprecation,
)
from fxquant.convert.tables import (
    CLAMP_NEEDS_CONTIGUOUS,
    METHOD_REWRITES,
    NATIVE_FUNCTIONS,
    NATIVE_METHODS,
    NATIVE_MISSING,
    NATIVE_MODULES,
)
from fxquant.numerics import QDType, quantize

# -- user-style models ----------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.down is None else self.down(x)
        return F.relu(out + identity)


class ResNetish(nn.Module):
    """conv-bn-relu stem, max pool, residual blocks (one downsampling), global pool, linear."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class DepthwiseSeparable(nn.Module):
    """MobileNet-style: depthwise 3x3 + pointwise 1x1 with BN and ReLU6, mean pooling head."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()

        def dw_pw(cin, cout, stride):
            return nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.ReLU6(),
                nn.Conv2d(cin, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU6(),
            )

        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU6())
        self.blocks = nn.Sequential(dw_pw(8, 16, 1), dw_pw(16, 32, 2), dw_pw(32, 32, 1))
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(x.mean((2, 3)))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(48, 64)
        self.fc2 = nn.Linear(64, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


MODELS = {
    "resnet": (ResNetish, (3, 16, 16)),
    "depthwise": (DepthwiseSeparable, (3, 16, 16)),
    "mlp": (MLP, (3, 4, 4)),
}


def _trained_like(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics (as after training), eval mode."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _calibrated(name: str, backend: str, setter=None):
    cls, shape = MODELS[name]
    model = _trained_like(cls())
    data = [torch.randn(8, *shape) for _ in range(4)]
    setter = setter or fxquant.default_calibration_qconfig_setter
    qmodel = fxquant.prepare(model, data[0], setter, backend=backend)
    fxquant.calibrate(qmodel, data, progress=False)
    return qmodel, shape


def _output_scale(qmodel: nn.Module) -> float:
    out = next(n for n in qmodel.graph.nodes if n.op == "output").args[0]
    return float(qmodel.get_submodule(out.target).scale.detach())


def _agreement(qmodel, converted, x) -> tuple[float, float]:
    """(fraction of elements within 1 step, max difference in steps) of the last quantizer."""
    with torch.no_grad():
        ref, out = qmodel(x), converted(x)
    steps = (out - ref).abs() / _output_scale(qmodel)
    return float((steps <= 1 + 1e-3).float().mean()), float(steps.max())


# -- acceptance -----------------------------------------------------------------------------

EXPECTED_MODULES = {
    "resnet": {nniq.ConvReLU2d, nnq.Conv2d, nnq.Linear},
    "depthwise": {nnq.Conv2d, nnq.Linear},
    "mlp": {nniq.LinearReLU, nnq.Linear},
}


@pytest.mark.parametrize("backend", ["x86", "qnnpack", "fbgemm"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_converted_model_matches_simulation(name, backend):
    qmodel, shape = _calibrated(name, backend)
    converted = convert(qmodel, backend=backend)
    assert isinstance(converted, ConvertedModel)
    assert converted.backend == backend and converted.engine == backend
    assert converted.float_ops == []
    types = {type(m) for m in converted.modules()}
    assert EXPECTED_MODULES[name] <= types, types
    within, worst = _agreement(qmodel, converted, torch.randn(32, *shape))
    print(f"\n{name}/{backend}: {100 * within:.2f}% within 1 step, max {worst:.2f} steps")
    assert within >= 0.99, (within, worst)
    assert worst <= 2.0


def test_report_and_summary_list_every_op():
    qmodel, _ = _calibrated("resnet", "x86")
    converted = convert(qmodel)
    text = summary(converted)
    assert text == converted.report()
    assert "float ops: 0" in text and "ConvReLU2d" in text and "quantized::add_relu" in text
    names = [o.name for o in converted.ops]
    assert "layer1._generated_add_0" in names and "fc" in names
    kinds = {o.name: o.execution for o in converted.ops}
    assert kinds["maxpool"] is Execution.PASSTHROUGH
    assert kinds["avgpool"] is Execution.INTEGER
    # one quantize at the input, one dequantize at the output, nothing in between
    assert converted.boundaries()["quantize"] == 1
    assert converted.boundaries()["dequantize"] == 1
    with pytest.raises(TypeError, match=r"fxquant\.summary"):
        summary(qmodel)


def test_prepared_model_is_untouched():
    qmodel, shape = _calibrated("resnet", "x86")
    x = torch.randn(4, *shape)
    with torch.no_grad():
        before_out = qmodel(x)
    before_state = {k: v.clone() for k, v in qmodel.state_dict().items()}
    before_code = qmodel.code
    states = [m.state for m in qmodel.modules() if isinstance(m, fxquant.FakeQuantize)]
    convert(qmodel)
    assert qmodel.code == before_code
    after_state = qmodel.state_dict()
    assert before_state.keys() == after_state.keys()
    assert all(torch.equal(before_state[k], after_state[k]) for k in before_state)
    assert states == [m.state for m in qmodel.modules() if isinstance(m, fxquant.FakeQuantize)]
    with torch.no_grad():
        assert torch.equal(qmodel(x), before_out)


def test_engine_is_restored_after_convert_and_forward():
    qmodel, shape = _calibrated("mlp", "qnnpack")
    before = torch.backends.quantized.engine
    converted = convert(qmodel, "qnnpack")
    assert torch.backends.quantized.engine == before
    converted(torch.randn(2, *shape))
    assert torch.backends.quantized.engine == before


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated in 2.13
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # shapes fixed by the trace
def test_deepcopy_and_torchscript_round_trip(tmp_path):
    qmodel, shape = _calibrated("resnet", "x86")
    converted = convert(qmodel)
    x = torch.randn(2, *shape)
    expected = converted(x)
    assert torch.equal(copy.deepcopy(converted)(x), expected)
    with quantized_engine(converted.engine):
        torch.jit.save(torch.jit.trace(converted.module, x), tmp_path / "int8.pt")
        assert torch.equal(torch.jit.load(tmp_path / "int8.pt")(x), expected)


# -- errors ---------------------------------------------------------------------------------


def test_uncalibrated_model_names_the_quantizer():
    cls, shape = MODELS["mlp"]
    qmodel = fxquant.prepare(cls().eval(), torch.randn(2, *shape), backend="x86")
    with pytest.raises(ConvertError, match=r"no scale yet: .*'x' \(x\.output_fake_quant\)"):
        convert(qmodel)


def test_int16_activation_names_the_op_or_stays_float():
    int16 = fxquant.ModuleNameQconfigSetter(
        {"fc2": fxquant.get_qconfig(out_dtype=fxquant.qint16)}
    )
    qmodel, shape = _calibrated(
        "mlp", "x86", (int16, fxquant.default_calibration_qconfig_setter)
    )
    # fc2's relu is fused: its output quantizer sits after the relu
    with pytest.raises(ConvertError, match=r"op 'fc2 \+ _generated_relu_1'.*qint16.*keep_float"):
        convert(qmodel)
    converted = convert(qmodel, keep_float=True)
    floats = dict(converted.float_ops)
    assert "fc2" in floats and any("qint16" in r for r in floats.values()), floats
    assert "fc1" not in floats  # still integer: LinearReLU
    within, worst = _agreement(qmodel, converted, torch.randn(32, *shape))
    assert within >= 0.99, (within, worst)


def test_unknown_backend_and_eager_capture_are_refused():
    qmodel, _ = _calibrated("mlp", "x86")
    with pytest.raises(ValueError, match="tensorrt"):
        convert(qmodel, backend="tensorrt")

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            if x.sum() > 0:
                return self.fc(x)
            return self.fc(-x)

    eager = fxquant.prepare(Branchy().eval(), torch.randn(2, 4), backend="x86")
    fxquant.calibrate(eager, [torch.randn(2, 4)], progress=False)
    with pytest.raises(ConvertError, match="captured eagerly"):
        convert(eager)
    with pytest.raises(TypeError, match="prepare"):
        convert(nn.Linear(2, 2))


# -- numerics details -----------------------------------------------------------------------


def test_reduce_range_saturation_matches_simulation():
    """x86 activations use codes 0..127; inputs far outside the calibrated range must saturate
    at 127 as in the simulation (torch's kernels alone would go on to 255)."""
    qmodel, shape = _calibrated("resnet", "x86")
    converted = convert(qmodel)
    within, worst = _agreement(qmodel, converted, 4.0 * torch.randn(16, *shape))
    assert within >= 0.99 and worst <= 2.0, (within, worst)


def test_signed_activations_convert_exactly_through_a_zero_point_shift():
    """generic profile: symmetric qint8 activations become quint8 with zero point 128."""
    qmodel, shape = _calibrated("resnet", "generic")
    qp = activation_qparams(qmodel.get_submodule("x.output_fake_quant"))
    assert (qp.zero_point, qp.lo, qp.hi) == (128, 0, 255)
    converted = convert(qmodel, "x86")
    assert converted.float_ops == []
    within, worst = _agreement(qmodel, converted, torch.randn(16, *shape))
    assert within >= 0.99, (within, worst)


@pytest.mark.parametrize(
    "dtype", [fxquant.qint8, fxquant.quint8, fxquant.qint4, fxquant.qint8.narrow()], ids=repr
)
def test_integer_weights_are_fxquant_codes(dtype):
    fq = fxquant.FakeQuantize(dtype=dtype, symmetric=dtype.signed, ch_axis=0, is_weight=True)
    conv = fxquant.nn.QuantConv2d(4, 6, 3, weight_fake_quant=fq)
    fq.set_state(fxquant.FakeQuantState.VALIDATION)
    with silence_deprecation():
        qw = quantized_weight(conv.weight, fq)
    codes = quantize(conv.weight.detach(), fq.scale, fq.zero_point, dtype, 0, fq.scale_math)
    shift = 0 if dtype.signed else 128
    assert torch.equal(qw.int_repr().long(), codes.long() - shift)
    assert torch.equal(qw.dequantize(), fq(conv.weight.detach()))


def test_activation_dtype_mapping():
    for dtype, (zp, lo, hi) in {
        QDType(7, False): (3, 0, 127),
        fxquant.quint8: (3, 0, 255),
        fxquant.qint8: (131, 0, 255),
        fxquant.qint4: (131, 120, 135),
    }.items():
        fq = fxquant.FakeQuantize(dtype=dtype, symmetric=False)
        fq.zero_point.fill_(3)
        qp = activation_qparams(fq)
        assert (qp.zero_point, qp.lo, qp.hi) == (zp, lo, hi), dtype
        assert (qp.clamp is None) == ((lo, hi) == (0, 255))


def test_ops_without_integer_kernel_stay_float_with_reasons():
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            y = torch.sigmoid(self.conv(x))
            y = torch.cat([y, y.flip(2)], 1)[:, :8]
            y = self.up(y)
            return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))

    model = Mixed().eval()
    data = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    qmodel = fxquant.prepare(
        model, data[0], fxquant.default_calibration_qconfig_setter, backend="x86"
    )
    fxquant.calibrate(qmodel, data, progress=False)
    converted = convert(qmodel)
    floats = dict(converted.float_ops)
    assert set(floats) == {"_generated_sigmoid_0", "up"}, floats
    assert "sigmoid" in floats["_generated_sigmoid_0"]
    assert "transposed conv" in floats["up"]
    kinds = {o.name: o.execution for o in converted.ops}
    assert kinds["_generated_cat_0"] is Execution.INTEGER
    assert kinds["conv"] is Execution.INTEGER
    within, worst = _agreement(qmodel, converted, torch.randn(8, 3, 8, 8))
    assert within >= 0.99, (within, worst)


class Pools(nn.Module):
    """Average pools with their own output scale, mul / matmul of quantized tensors, cat."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        y = F.avg_pool2d(self.conv2(x), 3, 1, 1)
        z = torch.cat([x * y, F.relu(x + y)], 1).mean((2, 3), keepdim=True)
        z = z.flatten(1)
        return self.fc(z) @ self.fc.weight


@pytest.mark.parametrize("backend", ["x86", "qnnpack"])
def test_pooling_and_binary_ops_run_on_integer_kernels(backend):
    model = Pools().eval()
    data = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    qmodel = fxquant.prepare(
        model, data[0], fxquant.default_calibration_qconfig_setter, backend=backend
    )
    fxquant.calibrate(qmodel, data, progress=False)
    converted = convert(qmodel, backend)
    kinds = {o.name: (o.execution, o.detail) for o in converted.ops}
    for name in ("pool", "_generated_avg_pool2d_0", "_generated_mean_0", "_generated_mul_0",
                 "_generated_add_0", "_generated_cat_0", "_generated_matmul_0"):
        assert kinds[name][0] is Execution.INTEGER, (name, kinds[name])
    assert "add_relu" in kinds["_generated_add_0"][1]
    within, worst = _agreement(qmodel, converted, torch.randn(16, 3, 8, 8))
    print(f"\npools/{backend}: {100 * within:.2f}% within 1 step, max {worst:.2f} steps")
    assert within >= 0.99, (within, worst)


def test_learned_scales_after_qat_convert():
    """LSQ quantizers (scale / zero point are Parameters) after a few QAT steps."""
    cls, shape = MODELS["mlp"]
    data = [torch.randn(8, *shape) for _ in range(4)]
    qconfig = fxquant.get_qconfig(
        learnable=True, out_dtype=QDType(7, False), symmetric=False,
        scale_math=fxquant.ScaleMath.RECIPROCAL,
    )
    qmodel = fxquant.prepare(cls(), data[0], qconfig, backend="x86")
    fxquant.calibrate(qmodel, data, progress=False)
    fxquant.set_fake_quantize(qmodel, fxquant.FakeQuantState.QAT)
    opt = torch.optim.SGD(qmodel.parameters(), lr=1e-3)
    for x in data:
        loss = qmodel.train()(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    qmodel.eval()
    fxquant.set_fake_quantize(qmodel, fxquant.FakeQuantState.VALIDATION)
    converted = convert(qmodel)
    assert converted.float_ops == []
    within, worst = _agreement(qmodel, converted, torch.randn(32, *shape))
    assert within >= 0.99, (within, worst)


def test_inplace_reuses_the_prepared_model():
    qmodel, shape = _calibrated("mlp", "x86")
    reference = copy.deepcopy(qmodel)
    converted = convert(qmodel, inplace=True)
    within, _ = _agreement(reference, converted, torch.randn(16, *shape))
    assert within >= 0.99


# -- the op tables are facts about torch: check them ------------------------------------------

_FUNCTION_CALLS = {
    F.max_pool1d: lambda f, t: f(t.flatten(2), 2),
    F.max_pool2d: lambda f, t: f(t, 2),
    F.max_pool3d: lambda f, t: f(t.unsqueeze(0), 2),
    torch.flatten: lambda f, t: f(t, 1),
    torch.reshape: lambda f, t: f(t, (2, -1)),
    torch.permute: lambda f, t: f(t, (0, 2, 3, 1)),
    torch.transpose: lambda f, t: f(t, 1, 2),
    torch.squeeze: lambda f, t: f(t[:, :1], 1),
    torch.unsqueeze: lambda f, t: f(t, 1),
    torch.chunk: lambda f, t: f(t, 2, 1)[1],
    torch.split: lambda f, t: f(t, 2, 1)[0],
    operator.getitem: lambda f, t: f(t, (slice(None), slice(1, 3))),
    torch.narrow: lambda f, t: f(t, 1, 1, 2),
    F.pixel_shuffle: lambda f, t: f(t, 2),
    F.pixel_unshuffle: lambda f, t: f(t, 2),
    torch.t: lambda f, t: f(t[0, 0]),
    torch.flip: lambda f, t: f(t, (2,)),
    torch.unbind: lambda f, t: f(t, 1)[2],
    torch.movedim: lambda f, t: f(t, 1, 3),
    torch.swapaxes: lambda f, t: f(t, 1, 3),
    torch.tile: lambda f, t: f(t, (1, 2, 1, 1)),
    F.interpolate: lambda f, t: f(t, scale_factor=2, mode="nearest"),
}
# method -> the call the converted graph makes (``view`` is rewritten to ``reshape``)
_METHOD_CALLS = {
    "reshape": lambda t: t.reshape(2, -1),
    "view": lambda t: t.reshape(2, -1),
    "flatten": lambda t: t.flatten(1),
    "permute": lambda t: t.permute(0, 2, 3, 1),
    "transpose": lambda t: t.transpose(1, 2),
    "contiguous": lambda t: t.contiguous(),
    "squeeze": lambda t: t[:, :1].squeeze(1),
    "unsqueeze": lambda t: t.unsqueeze(1),
    "chunk": lambda t: t.chunk(2, 1)[1],
    "split": lambda t: t.split(2, 1)[0],
    "expand": lambda t: t[:, :1].expand(2, 4, 6, 6),
    "expand_as": lambda t: t[:, :1].expand_as(t),
    "repeat": lambda t: t.repeat(1, 2, 1, 1),
    "narrow": lambda t: t.narrow(1, 1, 2),
    "flip": lambda t: t.flip((2,)),
    "t": lambda t: t[0, 0].t(),
    "reshape_as": lambda t: t.flatten(1).reshape_as(t),
    "view_as": lambda t: t.flatten(1).reshape_as(t),
    "unflatten": lambda t: t.unflatten(1, (2, 2)),
    "unbind": lambda t: t.unbind(1)[2],
    "clone": lambda t: t.clone(),
    "detach": lambda t: t.detach(),
    "movedim": lambda t: t.movedim(1, 3),
    "swapaxes": lambda t: t.swapaxes(1, 3),
    "tile": lambda t: t.tile((1, 2, 1, 1)),
    "__getitem__": lambda t: t[:, 1],
}
# module type -> (instance, rank of its input)
_MODULE_CALLS = {
    nn.MaxPool1d: (nn.MaxPool1d(2), 3),
    nn.MaxPool2d: (nn.MaxPool2d(2), 4),
    nn.MaxPool3d: (nn.MaxPool3d(2), 5),
    nn.Flatten: (nn.Flatten(), 4),
    nn.Unflatten: (nn.Unflatten(1, (2, 2)), 4),
    nn.PixelShuffle: (nn.PixelShuffle(2), 4),
    nn.PixelUnshuffle: (nn.PixelUnshuffle(2), 4),
    nn.ChannelShuffle: (nn.ChannelShuffle(2), 4),
    nn.UpsamplingNearest2d: (nn.UpsamplingNearest2d(scale_factor=2), 4),
    nn.Upsample: (nn.Upsample(scale_factor=2), 4),
    nn.ZeroPad1d: (nn.ZeroPad1d(1), 3),
    nn.ZeroPad2d: (nn.ZeroPad2d(1), 4),
    nn.ZeroPad3d: (nn.ZeroPad3d(1), 5),
}


def _same(fn, q) -> bool:
    """``fn`` on the quantized tensor gives the same values as on its dequantized float."""
    got, ref = fn(q), fn(q.dequantize())
    got = got if isinstance(got, torch.Tensor) else got[0]
    ref = ref if isinstance(ref, torch.Tensor) else ref[0]
    return got.is_quantized and torch.equal(got.dequantize(), ref)


def _ranked(q, rank: int):
    return q if rank == 4 else q.flatten(2) if rank == 3 else q.unsqueeze(0)


@pytest.mark.parametrize("engine", ["x86", "qnnpack"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_native_ops_on_quantized_tensors(layout, engine):
    """Quantized convs return channels-last tensors: every op must also be right on those."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    with silence_deprecation():
        q = torch.quantize_per_tensor(torch.rand(2, 4, 6, 6) * 3 - 1, 0.03, 40, torch.quint8)
    q = q.contiguous(memory_format=fmt)
    missing = NATIVE_MISSING.get(engine, frozenset())
    with quantized_engine(engine):
        assert set(_FUNCTION_CALLS) == set(NATIVE_FUNCTIONS)
        for f, call in _FUNCTION_CALLS.items():
            if f in missing:
                with pytest.raises(RuntimeError):
                    call(f, q)
            else:
                assert _same(lambda t, f=f, call=call: call(f, t), q), f
        assert set(_METHOD_CALLS) == set(NATIVE_METHODS) | set(METHOD_REWRITES)
        for m, fn in _METHOD_CALLS.items():
            assert _same(fn, q), m
        assert set(_MODULE_CALLS) == set(NATIVE_MODULES)
        for cls, (mod, rank) in _MODULE_CALLS.items():
            if cls in missing:
                with pytest.raises(RuntimeError):
                    mod(_ranked(q, rank))
            else:
                assert _same(mod, _ranked(q, rank)), cls


@pytest.mark.parametrize("engine", ["x86", "qnnpack"])
def test_saturating_clamp_is_right_on_channels_last(engine):
    """torch 2.13's qnnpack clamp misreads channels-last tensors; the lowering works around it."""
    qmodel, shape = _calibrated("depthwise", "qnnpack" if engine == "qnnpack" else "x86")
    converted = convert(qmodel, engine)
    clamps = [n for n in converted.module.graph.nodes if n.target is torch.clamp]
    assert clamps  # relu6 becomes a quantized clamp
    if engine in CLAMP_NEEDS_CONTIGUOUS:
        assert all(n.args[0].target == "contiguous" for n in clamps)
    within, worst = _agreement(qmodel, converted, torch.randn(8, *shape))
    assert within >= 0.99, (within, worst)
