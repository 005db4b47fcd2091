"""export_onnx of ops met in timm models: runtime shapes, functional BatchNorm, attention,
group norm and padding, each run in ONNX Runtime against fxquant's simulation."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant.export import ExportError, export_onnx, verify

from ..graph.models import BatchNormAct, ConvBnAct


def _export(model: nn.Module, example: torch.Tensor, path, *calib: torch.Tensor) -> nn.Module:
    qmodel = fxquant.prepare(model, example, fxquant.default_calibration_qconfig_setter,
                             backend="onnxruntime")
    fxquant.calibrate(qmodel, [example, *calib], progress=False)
    export_onnx(qmodel, example, path)
    return qmodel


def _ort(path, x: torch.Tensor):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


# -- runtime shapes -------------------------------------------------------------------------------
class ReshapeAs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return self.fc(x).flatten(0, 1).relu().reshape_as(x)


class ViewExpandAs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        y = self.fc(x).flatten(0, 1).view_as(x)
        gate = self.fc(x).mean(dim=(0, 1), keepdim=True).sigmoid().expand_as(x)
        return y * gate


class SizesFromShapes(nn.Module):
    """ViT-style: sizes read from ``x.shape`` / ``x.size()`` (class token expanded to the batch,
    reshape to a size computed from the batch of a flattened tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))

    def forward(self, x):
        b, n = x.shape[0], x.size(1)
        y = self.fc(x).flatten(0, 1).relu().reshape(b, n * 2, 8)
        y = torch.cat([self.cls.expand(x.shape[0], -1, -1), y.view(b, -1, 16)], dim=1)
        y = y.view(x.size(0) * 2, -1).flatten(0, 1).unflatten(0, (b, -1))
        return y.flatten(0, 1).unflatten(0, (-1, 10 * n))


@pytest.mark.parametrize("model", [pytest.param(ReshapeAs, marks=pytest.mark.slow),
                                   pytest.param(ViewExpandAs, marks=pytest.mark.slow),
                                   SizesFromShapes])
def test_reshape_as_uses_the_runtime_shape(model, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "m.onnx"
    float_model = model()
    qmodel = _export(float_model, torch.randn(8, 4, 16), path)
    x = torch.randn(16, 4, 16)  # another batch size than the example's
    assert _ort(path, x).shape == float_model(x).shape
    assert verify(qmodel, path, x, "onnxruntime").ok()


# -- functional BatchNorm (timm BatchNormAct2d) ---------------------------------------------------
class BnFirst(nn.Module):
    """A functional BatchNorm on the input: nothing to fold into."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = BatchNormAct(3)
        self.head = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.head(self.bn(x))


def _randomize_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return model.eval()


def test_functional_batch_norm_after_conv_is_folded(tmp_path):
    torch.manual_seed(0)
    model = _randomize_bn(ConvBnAct(head=True))
    x = torch.randn(4, 3, 8, 8)
    path = tmp_path / "m.onnx"
    qmodel = _export(model, x, path)
    rep = fxquant.graph.get_report(qmodel)
    assert rep.ops["conv"].folded == "bn._generated_batch_norm_0"
    assert "output" not in rep.ops["conv"].quantizers  # conv -> relu fused, no BN in between
    assert not any(n.target is F.batch_norm for n in qmodel.graph.nodes)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "BatchNormalization" not in ops
    assert verify(qmodel, path, torch.randn(8, 3, 8, 8), "onnxruntime").ok()


def test_functional_batch_norm_emitter_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = _randomize_bn(BnFirst())
    x = torch.randn(4, 3, 8, 8)
    path = tmp_path / "m.onnx"
    qmodel = _export(model, x, path)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "BatchNormalization" in ops
    assert verify(qmodel, path, torch.randn(8, 3, 8, 8), "onnxruntime").ok()
    float_path = tmp_path / "f.onnx"
    export_onnx(qmodel, x, float_path, quantize=False)
    torch.testing.assert_close(
        torch.from_numpy(_ort(float_path, x)), model(x), atol=1e-5, rtol=1e-5
    )


def test_unfolded_batch_norm_after_conv_runs_in_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = _randomize_bn(ConvBnAct(head=True))
    x = torch.randn(4, 3, 8, 8)
    qmodel = fxquant.prepare(model, x, fxquant.default_calibration_qconfig_setter,
                             backend="onnxruntime", fold_bn=False)
    fxquant.calibrate(qmodel, [x], progress=False)
    path = tmp_path / "m.onnx"
    export_onnx(qmodel, x, path)
    assert "BatchNormalization" in {n.op_type for n in onnx.load(path).graph.node}
    assert verify(qmodel, path, torch.randn(8, 3, 8, 8), "onnxruntime").ok()


def test_functional_batch_norm_in_training_mode_is_refused(tmp_path):
    model = BnFirst().train()
    x = torch.randn(4, 3, 8, 8)
    qmodel = fxquant.prepare(model, x, fxquant.default_calibration_qconfig_setter,
                             backend="onnxruntime")
    fxquant.calibrate(qmodel, [x], progress=False)
    with pytest.raises(ExportError, match="batch statistics"):
        export_onnx(qmodel, x, tmp_path / "m.onnx")


class StdConv(nn.Conv2d):
    """timm's ScaledStdConv2d / StdConv2d: the weight standardised with
    ``F.batch_norm(weight, training=True)`` -- batch statistics of a constant."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         training=True, momentum=0.0, eps=1e-5).reshape_as(self.weight)
        return F.conv2d(x, w * 0.1, self.bias, self.stride, self.padding)


def test_weight_standardisation_exports_as_a_constant(tmp_path):
    """A batch norm in training mode over a weight (NF-ResNet's convs) is not refused: it is a
    function of constants, folded into the weight initializer; ORT then agrees with the
    simulation."""
    torch.manual_seed(0)
    model = nn.Sequential(StdConv(3, 8, 3), nn.ReLU(), StdConv(8, 8, 3)).eval()
    x = torch.randn(4, 3, 12, 12)
    qmodel = fxquant.prepare(model, x, fxquant.default_calibration_qconfig_setter,
                             backend="onnxruntime")
    fxquant.calibrate(qmodel, [x, torch.randn(4, 3, 12, 12)], progress=False)
    path = tmp_path / "std.onnx"
    export_onnx(qmodel, x, path)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    assert verify(qmodel, path, torch.randn(4, 3, 12, 12), "onnxruntime").ok()



# -- attention, group norm, padding ---------------------------------------------------------------
class Attention(nn.Module):
    """``F.scaled_dot_product_attention`` with no mask, a bool / float mask, or causal."""

    def __init__(self, mask: str) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)
        self.mask = mask
        keep = torch.rand(6, 6, generator=torch.Generator().manual_seed(1)) > 0.3
        keep |= torch.eye(6, dtype=torch.bool)
        self.register_buffer("keep", keep)
        self.register_buffer("bias", torch.randn(6, 6) * 0.5)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, c // 2).permute(2, 0, 3, 1, 4).unbind(0)
        if self.mask == "bool":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.keep)
        elif self.mask == "float":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias)
        elif self.mask == "causal":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class GroupNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.w = nn.Parameter(torch.rand(8) + 0.5)
        self.b = nn.Parameter(torch.randn(8) * 0.1)

    def forward(self, x):
        x = self.gn(self.conv(x))
        return F.group_norm(self.conv2(x), 4, self.w, self.b, eps=1e-6)


class SwinPad(nn.Module):
    """Swin pads the feature map to a multiple of the window size, computed from its shape."""

    def __init__(self, window: int = 4) -> None:
        super().__init__()
        self.window = window
        self.fc = nn.Linear(8, 8)
        self.pad2d = nn.ZeroPad2d((1, 0, 0, 1))

    def forward(self, x):
        x = self.fc(x)  # (B, H, W, C)
        _, h, w, _ = x.shape
        pad_h = (self.window - h % self.window) % self.window
        pad_w = (self.window - w % self.window) % self.window
        x = F.pad(x, [0, 0, 0, pad_w, 0, pad_h])
        x = F.pad(x.permute(0, 3, 1, 2), (1, 1, 2, 0), mode="constant", value=0.5)
        return self.pad2d(x).relu()


@pytest.mark.parametrize(
    "model, shape",
    [
        pytest.param(lambda: Attention("none"), (4, 6, 16), marks=pytest.mark.slow),
        (lambda: Attention("bool"), (4, 6, 16)),
        pytest.param(lambda: Attention("float"), (4, 6, 16), marks=pytest.mark.slow),
        pytest.param(lambda: Attention("causal"), (4, 6, 16), marks=pytest.mark.slow),
        (GroupNormNet, (4, 3, 8, 8)),
        (SwinPad, (4, 6, 7, 8)),
    ],
    ids=["sdpa", "sdpa_bool_mask", "sdpa_float_mask", "sdpa_causal", "group_norm", "pad"],
)
def test_op_runs_in_onnxruntime_like_the_simulation(model, shape, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "m.onnx"
    qmodel = _export(model(), torch.randn(*shape), path, torch.randn(*shape))
    x = torch.randn(2 * shape[0], *shape[1:])
    report = verify(qmodel, path, x, "onnxruntime")
    assert report.ok(), report
