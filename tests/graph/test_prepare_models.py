"""End-to-end prepare / calibrate / run on unmodified models (issue acceptance a-f)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import fuse_modules, fuse_modules_qat

import fxquant
from fxquant import FakeQuantState, QConfig, get_qconfig, qint8, qint16
from fxquant.fake_quant import FakeQuantize
from fxquant.observers import FixedScaleObserver

from .models import (
    BackboneHeadE,
    BranchInForwardF,
    BranchInSubmoduleF,
    ConvNetA,
    EagerStyleB,
    MlpC,
    Reused,
    TinyTransformer,
    TwoInputAddD,
)


def sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    noise = (ref - x).pow(2).sum().clamp_min(1e-30)
    return float(10 * torch.log10(ref.pow(2).sum() / noise))


def rows(qmodel):
    return {(r.name, r.role): r for r in fxquant.summary(qmodel).quantizers}


def calib_data(shape, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def weighted_modules(model):
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Conv1d, nn.ConvTranspose1d))
    ]


def test_a_convnet_functional_ops():
    model = ConvNetA().eval()
    data = calib_data((4, 3, 16, 16))
    before = copy.deepcopy(model.state_dict())
    q = fxquant.prepare(model, data[0])
    for k, v in model.state_dict().items():  # original untouched
        assert torch.equal(v, before[k])
    assert not any(isinstance(m, FakeQuantize) for m in model.modules())
    fxquant.calibrate(q, data, progress=False)
    r = rows(q)
    for name in ("conv1", "conv2", "conv3", "fc"):
        assert (name, "weight") in r and r[(name, "weight")].granularity == "per_channel(axis=0)"
    # conv -> relu: no quantizer on the conv output, one after the relu
    assert ("conv1", "output") not in r and ("_generated_relu_0", "output") in r
    # max_pool / view reuse their input's quantization
    assert not any(
        n.startswith("_generated_max_pool2d") or n.startswith("_generated_view") for n, _ in r
    )
    assert fxquant.summary(q).float_ops == ()
    with torch.no_grad():
        assert sqnr_db(model(data[0]), q(data[0])) > 25.0


@pytest.mark.parametrize("prefuse", ["none", "eval", "qat"])
def test_b_eager_style_model(prefuse):
    model = EagerStyleB()
    if prefuse == "eval":
        model.eval()
        model = fuse_modules(model, [["conv", "bn", "relu"], ["conv2", "bn2", "relu2"]])
    elif prefuse == "qat":
        model.train()
        model = fuse_modules_qat(model, [["conv", "bn", "relu"], ["conv2", "bn2", "relu2"]])
    model.eval()
    data = calib_data((2, 3, 8, 8))
    q = fxquant.prepare(model, data[0])
    fxquant.calibrate(q, data, progress=False)
    r = rows(q)
    assert ("quant", "output") in r  # the QuantStub quantizes the input
    assert ("x", "output") not in r  # ... so the raw input is not quantized twice
    assert ("skip_add", "output") in r  # FloatFunctional.add keeps its module name
    assert not any(name.startswith("dequant") for name, _ in r)
    weights = [n for (n, role) in r if role == "weight"]
    assert len(weights) == 3
    out = q(data[0])
    with torch.no_grad():
        assert sqnr_db(model(data[0]), out) > 20.0
    if prefuse == "none":
        # conv + BN folded into one fold-aware module
        assert r[("conv", "weight")].op_type == "Conv2d+BatchNorm2d"


def test_c_int16_override_over_template():
    model = MlpC().eval()
    q16 = get_qconfig(weight_dtype=qint16, out_dtype=qint16)
    setter = (
        fxquant.ModuleNameQconfigSetter({"linear2": q16}),
        fxquant.qat_8bit_weight_16bit_act_qconfig_setter,
    )
    data = calib_data((8, 32))
    q = fxquant.prepare(model, data[0], qconfig_setter=setter)
    fxquant.calibrate(q, data, progress=False)
    r = rows(q)
    assert r[("linear2", "weight")].dtype == "qint16"
    assert r[("linear2", "output")].dtype == "qint16"
    assert r[("linear1", "weight")].dtype == "qint8"
    assert r[("linear1", "output")].dtype == "qint16"  # 16-bit activation template
    assert r[("linear0", "weight")].dtype == "qint8"
    with torch.no_grad():
        assert sqnr_db(model(data[0]), q(data[0])) > 30.0


def test_d_fixed_scales_are_exact():
    model = TwoInputAddD()
    fixed_in = get_qconfig(out_dtype=qint16, weight_dtype=None, fixed_scale=0.03125)
    fixed_add = get_qconfig(out_dtype=qint16, weight_dtype=None, fixed_scale=0.0625)
    setter = fxquant.ModuleNameQconfigSetter(
        {"quant_x": fixed_in, "quant_y": fixed_in, "_generated_add_0": fixed_add}
    )
    x, y = torch.randn(4, 10) * 20, torch.randn(4, 10) * 20
    q = fxquant.prepare(model, (x, y), qconfig_setter=setter)
    fxquant.calibrate(q, [(x, y), (x * 3, y)], progress=False)
    r = rows(q)
    assert float(r[("quant_x", "output")].scale) == 0.03125
    assert float(r[("quant_y", "output")].scale) == 0.03125
    assert float(r[("_generated_add_0", "output")].scale) == 0.0625
    fq = q.get_submodule(r[("_generated_add_0", "output")].path)
    assert isinstance(fq.observer, FixedScaleObserver) and fq.dtype == qint16
    assert fq.scale.item() == 0.0625 and fq.zero_point.item() == 0
    out = q(x, y)
    # every output is a multiple of 0.0625
    assert torch.equal(torch.round(out / 0.0625) * 0.0625, out)


def test_e_frozen_backbone_qat_head():
    torch.manual_seed(0)
    model = BackboneHeadE()
    data = calib_data((4, 3, 8, 8))
    q = fxquant.prepare(model, data[0])
    fxquant.calibrate(q, data, progress=False)
    q.train()
    fxquant.set_fake_quantize(q, FakeQuantState.QAT)
    fxquant.set_fake_quantize(q.backbone, FakeQuantState.VALIDATION)
    q.backbone.eval()
    q.backbone.requires_grad_(False)
    bb_before = {k: v.clone() for k, v in q.backbone.state_dict().items()}
    head_before = {k: v.clone() for k, v in q.head.state_dict().items()}
    opt = torch.optim.SGD([p for p in q.parameters() if p.requires_grad], lr=0.1)
    for x in data:
        loss = q(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in q.backbone.state_dict().items():
        assert torch.equal(v, bb_before[k]), k
    changed = [k for k, v in q.head.state_dict().items() if not torch.equal(v, head_before[k])]
    assert any(k.endswith("fc1.weight") for k in changed)
    assert any("output_fake_quant.scale" in k for k in changed)  # head scales still observe


def _check_branch_model(model_cls, mode):
    model = model_cls().eval()
    data = [x.abs() for x in calib_data((2, 3, 8, 8))]
    q = fxquant.prepare(model, data[0])
    fxquant.calibrate(q, data, progress=False)
    s = fxquant.summary(q)
    assert s.capture_mode == mode
    names = {(r.name, r.role) for r in s.quantizers}
    for w in ("stem", "conv", "fc"):
        assert (w, "weight") in names, (w, names)
    with torch.no_grad():
        assert sqnr_db(model(data[1]), q(data[1])) > 20.0
    return q, s


def test_f_branch_in_submodule_becomes_island():
    _q, s = _check_branch_model(BranchInSubmoduleF, "fx")
    reasons = {f.name: f.reason for f in s.float_ops}
    notes = {f.name: f.reason for f in s.capture}  # how it was captured: not a float op
    assert "gate" in notes and "if x.mean() > 0:" in notes["gate"]
    assert "models.py" in notes["gate"] and "gate" not in reasons
    # the island runs eagerly; the conv on the taken branch is still quantized
    taken = {r.name for r in s.quantizers if r.role == "weight"}
    assert "gate.a" in taken or "gate.b" in taken
    assert "gate.a" in reasons or "gate.b" in reasons  # the branch not taken is listed as float
    assert "runs eagerly" in str(s)


def test_f_branch_in_forward_falls_back_to_eager():
    _q, s = _check_branch_model(BranchInForwardF, "eager")
    reasons = {f.name: f.reason for f in s.float_ops}
    assert "if x.mean() > 0:" in {f.name: f.reason for f in s.capture}["<forward>"]
    assert "branch_b" in reasons  # not taken with the example inputs
    names = {r.name for r in s.quantizers}
    assert "branch_a" in names
    assert any(n.startswith("_generated_add") for n in names)  # the forward's own `+`


def test_reused_modules_get_one_quantizer_per_call_site():
    model = Reused().eval()
    data = calib_data((2, 4, 6, 6))
    q = fxquant.prepare(model, data[0])
    r = rows(q)
    assert ("relu", "output") in r and ("relu_1", "output") in r
    assert r[("relu", "output")].path != r[("relu_1", "output")].path
    assert ("conv", "weight") in r
    fxquant.calibrate(q, data, progress=False)
    assert fxquant.summary(q).float_ops == ()


def test_transformer_ops_and_conv_transpose_axis():
    model = TinyTransformer().eval()
    tokens = torch.randint(0, 50, (2, 12))
    q = fxquant.prepare(model, tokens)
    fxquant.calibrate(q, [tokens, torch.randint(0, 50, (2, 12))], progress=False)
    r = rows(q)
    assert r[("up", "weight")].granularity == "per_channel(axis=1)"
    assert r[("emb", "weight")].granularity == "per_channel(axis=0)"
    assert ("tokens", "output") not in r  # integer input is not quantized
    ops = {n for n, _ in r}
    for expected in (
        "_generated_matmul_0",
        "_generated_matmul_1",
        "_generated_softmax_0",
        "_generated_div_0",
        "norm",
        "_generated_interpolate_0",
    ):
        assert expected in ops, expected
    with torch.no_grad():
        assert sqnr_db(model(tokens), q(tokens)) > 15.0


@pytest.mark.parametrize(
    "model_cls, shape",
    [
        (ConvNetA, (2, 3, 16, 16)),
        (BranchInForwardF, (2, 3, 8, 8)),
        (BranchInSubmoduleF, (2, 3, 8, 8)),
    ],
)
def test_state_dict_round_trip_bit_identical(model_cls, shape):
    torch.manual_seed(0)
    model = model_cls().eval()
    data = [x.abs() for x in calib_data(shape)]
    q = fxquant.prepare(model, data[0])
    fxquant.calibrate(q, data, progress=False)
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    fresh = fxquant.prepare(model, data[0])
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    fresh.eval()
    q.eval()
    with torch.no_grad():
        assert torch.equal(q(data[2]), fresh(data[2]))
    assert all(r.state == "VALIDATION" for r in fxquant.summary(fresh).quantizers)


def test_qat_gradients_reach_weights_and_learnable_scales():
    model = ConvNetA()
    x = torch.randn(4, 3, 16, 16)
    q = fxquant.prepare(model, x, qconfig_setter=get_qconfig(learnable=True))
    fxquant.calibrate(q, [x], progress=False)
    fxquant.set_fake_quantize(q, FakeQuantState.QAT)
    q.train()
    F.cross_entropy(q(x), torch.tensor([0, 1, 2, 3])).backward()
    assert q.conv1.weight.grad is not None and q.conv1.weight.grad.abs().sum() > 0
    scales = [m.scale for m in q.modules() if isinstance(m, fxquant.LearnableFakeQuantize)]
    assert scales and all(s.grad is not None for s in scales)
    assert sum(float(s.grad.abs().sum()) for s in scales) > 0


def test_conv_bn_fold_aware_qat_updates_bn_stats():
    model = EagerStyleB().train()
    x = torch.randn(4, 3, 8, 8)
    q = fxquant.prepare(model, x)
    q.train()
    bn = q.conv.bn if hasattr(q.conv, "bn") else None
    mean_before = [b.clone() for n, b in q.named_buffers() if n.endswith("running_mean")]
    q(x)
    mean_after = [b for n, b in q.named_buffers() if n.endswith("running_mean")]
    assert mean_before and any(
        not torch.equal(a, b) for a, b in zip(mean_before, mean_after, strict=False)
    )
    del bn


def test_unknown_name_lists_closest_names():
    model = MlpC()
    with pytest.raises(fxquant.UnknownOpNameError) as err:
        fxquant.prepare(
            model,
            torch.randn(2, 32),
            qconfig_setter=fxquant.ModuleNameQconfigSetter({"linear_2": QConfig()}),
        )
    assert "linear2" in str(err.value)


def test_float_qconfig_excludes_op_and_is_reported():
    model = MlpC().eval()
    setter = (
        fxquant.ModuleNameQconfigSetter({"linear1": fxquant.FLOAT}),
        fxquant.default_qat_qconfig_setter,
    )
    q = fxquant.prepare(model, torch.randn(2, 32), qconfig_setter=setter)
    r = rows(q)
    assert ("linear1", "weight") not in r
    reasons = {f.name: f.reason for f in fxquant.summary(q).float_ops}
    assert "linear1" in reasons


def test_calibrate_requires_data_and_uncalibrated_errors_name_quantizer():
    model = MlpC().eval()
    q = fxquant.prepare(model, torch.randn(2, 32))
    with pytest.raises(ValueError, match="no batch"):
        fxquant.calibrate(q, [], progress=False)
    fxquant.set_fake_quantize(q, FakeQuantState.VALIDATION)
    fresh = fxquant.prepare(model, torch.randn(2, 32))
    fxquant.set_fake_quantize(fresh, FakeQuantState.VALIDATION)
    with pytest.raises(fxquant.QuantizerError, match="'x'"):
        fresh(torch.randn(2, 32))


def test_leaf_and_skip_modules():
    model = BackboneHeadE().eval()
    x = torch.randn(2, 3, 8, 8)
    q = fxquant.prepare(model, x, skip_modules=["head"])
    r = rows(q)
    assert not any(n.startswith("head.") for n, _ in r)
    reasons = {f.name: f.reason for f in fxquant.summary(q).float_ops}
    assert "skip" in reasons["head"]
    q2 = fxquant.prepare(model, x, leaf_modules=["head"])
    assert ("head", "output") in rows(q2)


def test_fixed_scale_factory_dtype_mismatch_is_named():
    fq = FakeQuantize(observer=FixedScaleObserver.with_args(scale=0.5, dtype=qint16), dtype=qint8)
    fq.name = "some.op"
    with pytest.raises(Exception, match=r"some\.op"):
        fq(torch.randn(3))


def test_eager_fallback_quantizes_ops_in_helpers():
    from .models import BranchWithHelpersF

    model = BranchWithHelpersF().eval()
    data = [x.abs() for x in calib_data((2, 3, 8, 8))]
    q = fxquant.prepare(model, data[0])
    fxquant.calibrate(q, data, progress=False)
    s = fxquant.summary(q)
    ops = {r.op_type for r in s.quantizers if r.role == "output"}
    assert {"add", "cat", "mul", "mean"} <= ops, ops
    assert all(r.scale != "?" for r in s.quantizers)
    with torch.no_grad():
        assert sqnr_db(model(data[1]), q(data[1])) > 20.0


def test_zero_bn_weight_is_stable_in_qat():
    model = EagerStyleB().train()
    with torch.no_grad():
        model.bn.weight[0] = 0.0
    x = torch.randn(4, 3, 8, 8)
    q = fxquant.prepare(model, x)
    q.train()
    out = q(x)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in q.parameters() if p.grad is not None)
    assert torch.isfinite(q.conv.bn.running_var).all()


def test_eager_capture_keeps_structure_kwargs_and_modulelist_blocks():
    from .models import HFStyleModel

    torch.manual_seed(0)
    model = HFStyleModel().eval()
    ids = torch.randint(0, 40, (2, 7))
    q = fxquant.prepare(model, ids)
    fxquant.calibrate(q, [ids, torch.randint(0, 40, (2, 7))], progress=False)
    s = fxquant.summary(q)
    assert s.capture_mode == "eager"
    assert isinstance(q, HFStyleModel) and isinstance(q.blocks, nn.ModuleList)
    assert q.blocks[0].mlp[0].weight is not None  # attribute paths still work
    weights = {r.name for r in s.quantizers if r.role == "weight"}
    for i in range(3):
        assert {f"blocks.{i}.attn._generated_addmm_0", f"blocks.{i}.mlp.0",
                f"blocks.{i}.mlp.2"} <= weights, weights
    # GPT-2 style [in, out] weights are quantized per output channel (axis 1)
    addmm = next(r for r in s.quantizers if r.name == "blocks.0.attn._generated_addmm_0"
                 and r.role == "weight")
    assert addmm.granularity == "per_channel(axis=1)"
    # Conv1DLike's forward unpacks x.shape (untraceable): an island that runs eagerly, whose
    # functional addmm still gets its weight and output quantized
    # the forward and the islands, run eagerly, are capture notes; the one op computing in float
    # is the max its `if h.abs().max() > 1e6:` reads
    assert [(f.name, f.op_type) for f in s.float_ops] == [("_generated_max_0", "max")]
    assert [f.name for f in s.capture] == ["<forward>"] + [f"blocks.{i}.attn" for i in range(3)]
    with torch.no_grad():
        assert sqnr_db(model(ids), q(ids)) > 20.0
        mask = torch.zeros(2, 7, 16)
        with pytest.warns(UserWarning, match="mask"):  # captured with mask=None
            assert sqnr_db(model(ids, mask=mask), q(ids, mask=mask)) > 20.0


def test_non_finite_values_stay_float():
    from .models import MaskedAttention

    model = MaskedAttention().eval()
    x = torch.randn(2, 6, 8)
    q = fxquant.prepare(model, x)
    fxquant.calibrate(q, [x], progress=False)  # would raise on -inf if it were observed
    reasons = {f.name: f.reason for f in fxquant.summary(q).float_ops}
    assert "Inf" in reasons["_generated_add_0"]
    with torch.no_grad():
        assert sqnr_db(model(x), q(x)) > 20.0


class _Pads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        x = F.pad(x, (1, 1, 1, 1))  # zero padding: reuses the input's quantization
        y = F.pad(self.conv(x), (1, 1, 1, 1), value=0.5)  # a new value: requantized
        return F.pad(y, (1, 1, 1, 1), mode="reflect")


def test_pad_zero_shares_and_constant_requantizes():
    q = fxquant.prepare(_Pads().eval(), torch.randn(1, 3, 8, 8))
    r = rows(q)
    assert ("_generated_pad_0", "output") not in r
    assert ("_generated_pad_1", "output") in r
    assert ("_generated_pad_2", "output") not in r
    assert fxquant.summary(q).float_ops == ()


def test_chunk_outputs_share_the_producers_quantizer():
    model = TinyTransformer().eval()
    q = fxquant.prepare(model, torch.randint(0, 50, (2, 12)))
    r = rows(q)
    assert ("qkv", "output") in r
    assert not any(n.startswith("_generated_getitem") or n.startswith("_generated_chunk")
                   for n, _ in r), sorted(r)


@pytest.mark.parametrize("cls, leaf", [(ConvNetA, "conv2"), (BranchInForwardF, "stem")])
def test_prepare_records_its_options_and_a_copy_of_the_example_inputs(cls, leaf):
    x = torch.randn(2, 3, 16, 16)
    q = fxquant.prepare(cls().eval(), x, leaf_modules=iter([leaf]), skip_modules=("fc",),
                        fold_bn=False)
    report = fxquant.graph.get_report(q)
    assert report.capture_mode == ("fx" if cls is ConvNetA else "eager")
    assert report.options == fxquant.graph.PrepareOptions((leaf,), ("fc",), False)
    before = x.clone()
    x.add_(1.0)  # the caller's tensor changes; the recorded copy does not
    assert torch.equal(report.example_inputs.args[0], before)
