"""AIMET encodings JSON: exact round trips, the offset convention, AIMET-written files, errors."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant.export.encodings import EncodingsError, export_encodings, load_encodings
from fxquant.fake_quant import FakeQuantState

VERSIONS = ("0.6.1", "1.0.0")


class Net(nn.Module):
    """conv+BN+relu, conv+relu, residual add, mean, a ConvTranspose (weight axis 1), a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 6, 2, stride=2)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        x = F.relu(self.conv2(x)) + x
        return self.fc(self.up(x).mean((2, 3)))


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = Net()
    with torch.no_grad():  # non-trivial BN statistics, folded into conv1
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


DATA = [torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]


def _setter(kind: str):
    if kind == "lsq":  # LearnableFakeQuantize: scale / zero point are Parameters
        return fxquant.get_qconfig(learnable=True, symmetric=False)
    if kind != "mixed16":
        return fxquant.default_calibration_qconfig_setter
    return (
        fxquant.ModuleNameQconfigSetter(
            {
                # signed asymmetric int16 output (zero point != 0) and symmetric int16
                "fc": fxquant.get_qconfig(out_dtype=fxquant.qint16, symmetric=False),
                "_generated_mean_0": fxquant.get_qconfig(out_dtype=fxquant.qint16),
                # input quantizers (roles input_0 / input_1), unsigned asymmetric
                "_generated_add_0": fxquant.get_qconfig(in_dtype=fxquant.quint8, symmetric=False),
            }
        ),
        fxquant.default_calibration_qconfig_setter,
    )


# generic: symmetric int8, per-channel weights; x86: asymmetric 7-bit unsigned activations;
# qnnpack: asymmetric uint8 activations, per-tensor weights; tensorrt: narrow-range weights;
# mixed16: int16 (signed asymmetric + symmetric) outputs and input quantizers; lsq: learnable.
CASES = [
    ("generic", "default"),
    ("x86", "default"),
    ("qnnpack", "default"),
    ("tensorrt", "default"),
    ("generic", "mixed16"),
    ("generic", "lsq"),
]


def _prepare(backend: str = "generic", kind: str = "default") -> nn.Module:
    return fxquant.prepare(_model(), DATA[0], _setter(kind), backend=backend)


def _calibrated(backend: str = "generic", kind: str = "default") -> nn.Module:
    q = _prepare(backend, kind)
    fxquant.calibrate(q, DATA, progress=False)
    return q


def _quantizers(q: nn.Module) -> dict[str, fxquant.FakeQuantize]:
    return {n: m for n, m in q.named_modules() if isinstance(m, fxquant.FakeQuantize)}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("backend", "kind"), CASES)
def test_round_trip_is_byte_identical_and_outputs_bit_exact(tmp_path, version, backend, kind):
    ref = _calibrated(backend, kind)
    first, second = tmp_path / "a.encodings", tmp_path / "b.encodings"
    enc = export_encodings(ref, first, version=version)
    assert json.loads(first.read_text()) == enc

    fresh = _prepare(backend, kind)  # uncalibrated
    assert not any(bool(fq.calibrated) for fq in _quantizers(fresh).values())
    load_encodings(fresh, first)
    export_encodings(fresh, second, version=version)
    assert first.read_bytes() == second.read_bytes()

    for name, fq in _quantizers(fresh).items():
        r = _quantizers(ref)[name]
        assert torch.equal(fq.scale, r.scale) and torch.equal(fq.zero_point, r.zero_point), name
        assert fq.state is FakeQuantState.VALIDATION and fq.fixed_in_qat
    with torch.no_grad():
        for x in DATA:
            assert torch.equal(fresh(x), ref(x))


def test_file_layout_and_names():
    q = _calibrated("generic", "mixed16")
    legacy = export_encodings(q, None)
    assert legacy["version"] == "0.6.1" and legacy["excluded_layers"] == []
    assert set(legacy["param_encodings"]) == {
        "conv1.weight",
        "conv2.weight",
        "up.weight",
        "fc.weight",
    }
    acts = legacy["activation_encodings"]
    assert {"x", "fc", "_generated_add_0.input_0", "_generated_add_0.input_1"} <= set(acts)
    assert len(legacy["param_encodings"]["up.weight"]) == 6  # ConvTranspose: out channels, axis 1
    assert len(legacy["param_encodings"]["conv1.weight"]) == 4
    e = acts["fc"][0]
    assert e["is_symmetric"] == "False" and e["bitwidth"] == 16 and e["dtype"] == "int"
    assert acts["_generated_mean_0"][0]["is_symmetric"] == "True"
    # most activation quantizers here use get_qconfig's moving-average min/max observer
    assert legacy["quantizer_args"] == {
        "activation_bitwidth": 8,
        "dtype": "int",
        "is_symmetric": True,
        "param_bitwidth": 8,
        "per_channel_quantization": True,
        "quant_scheme": "post_training_tf",
    }
    args = export_encodings(_calibrated("qnnpack"), None)["quantizer_args"]
    assert args["quant_scheme"] == "post_training_tf_enhanced"  # the template's MSE observer
    assert args["per_channel_quantization"] is False
    v1 = export_encodings(q, None, version="1.0.0")
    by_name = {e["name"]: e for e in v1["param_encodings"]}
    assert (
        by_name["up.weight"]["enc_type"] == "PER_CHANNEL"
        and len(by_name["up.weight"]["scale"]) == 6
    )
    fc_out = next(e for e in v1["activation_encodings"] if e["name"] == "fc")
    assert fc_out["enc_type"] == "PER_TENSOR" and fc_out["is_sym"] is False and fc_out["bw"] == 16
    assert [e["name"] for e in v1["activation_encodings"]] == sorted(acts)


def _set(fq, scale: float, zp: int, dtype=None, symmetric=None) -> float:
    if dtype is not None:
        fq.dtype = dtype
    if symmetric is not None:
        fq.symmetric = symmetric
    fq._store_qparams(torch.tensor(scale, dtype=torch.float32), torch.tensor(zp))
    return float(np.float32(scale))


@pytest.mark.parametrize(
    ("dtype", "symmetric", "zp", "offset_061", "offset_100", "lo_code", "hi_code"),
    [
        (fxquant.qint8, True, 0, -128, -128, -128, 127),  # the legacy AIMET symmetric case
        (fxquant.qint8, False, -20, -108, -108, -108, 147),  # signed asymmetric
        (fxquant.quint8, False, 37, -37, -37, -37, 218),
        (fxquant.quint8, True, 128, -128, -128, -128, 127),  # unsigned symmetric = same grid
        (fxquant.QDType(7, False), False, 67, -67, -67, -67, 60),  # x86 reduced range
        (fxquant.qint16, False, -330, -32438, -32438, -32438, 33097),
        (fxquant.qint8.narrow(), True, 0, -127, -128, -127, 127),  # AIMET strict symmetric
    ],
)
def test_offset_convention_known_cases(
    dtype, symmetric, zp, offset_061, offset_100, lo_code, hi_code
):
    q = _calibrated()
    fq = q.get_submodule("x.output_fake_quant")
    s = _set(fq, 0.0123, zp, dtype, symmetric)
    (e,) = export_encodings(q, None)["activation_encodings"]["x"]
    assert e["offset"] == offset_061 and e["scale"] == s and e["bitwidth"] == dtype.bits
    assert e["min"] == lo_code * s and e["max"] == hi_code * s
    assert e["min"] == e["offset"] * e["scale"]
    # fxquant's representable range, exactly
    assert e["min"] == (dtype.qmin - zp) * s and e["max"] == (dtype.qmax - zp) * s
    if not dtype.narrow_range:
        assert e["max"] == pytest.approx(e["min"] + (2**dtype.bits - 1) * s, rel=1e-15)
    v1 = export_encodings(q, None, version="1.0.0")
    (a,) = [a for a in v1["activation_encodings"] if a["name"] == "x"]
    assert a["offset"] == [offset_100] and a["scale"] == [s] and a["is_sym"] is symmetric


def test_symmetric_int8_legacy_numbers():
    q = _calibrated()
    s = _set(q.get_submodule("x.output_fake_quant"), 0.05, 0)
    (e,) = export_encodings(q, None)["activation_encodings"]["x"]
    assert (e["offset"], e["min"], e["max"], e["is_symmetric"]) == (-128, -128 * s, 127 * s, "True")


def _aimet_conv_model() -> nn.Module:
    class ConvOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.conv(x)

    torch.manual_seed(0)
    return ConvOnly().eval()


def test_hand_written_aimet_061_file_loads(tmp_path):
    # as AIMET 1.x emits for a conv: asymmetric uint8 activations (min/max/offset/scale),
    # symmetric per-channel int8 weights, string booleans, extra keys everywhere
    x_scale, out_min, out_max = 0.0235, -1.2, 2.5
    conv_scales = [0.0031, 0.0047]
    doc = {
        "version": "0.6.1",
        "activation_encodings": {
            "x": [
                {
                    "bitwidth": 8,
                    "dtype": "int",
                    "is_symmetric": "False",
                    "max": (255 - 100) * x_scale,
                    "min": -100 * x_scale,
                    "offset": -100,
                    "scale": x_scale,
                }
            ],
            # min / max only: scale and offset computed as AIMET does
            "conv": [
                {
                    "bitwidth": 8,
                    "dtype": "int",
                    "is_symmetric": "False",
                    "max": out_max,
                    "min": out_min,
                }
            ],
        },
        "param_encodings": {
            "conv.weight": [
                {
                    "bitwidth": 8,
                    "dtype": "int",
                    "is_symmetric": "True",
                    "max": 127 * s,
                    "min": -128 * s,
                    "offset": -128,
                    "scale": s,
                    "channel_note": "ignored",
                }
                for s in conv_scales
            ]
        },
        "excluded_layers": [],
        "quantizer_args": {"activation_bitwidth": 8, "param_bitwidth": 8, "quant_scheme": "x"},
        "producer": "hand written",
    }
    path = tmp_path / "aimet.encodings"
    path.write_text(json.dumps(doc))
    q = fxquant.prepare(_aimet_conv_model(), DATA[0], backend="onnxruntime")
    load_encodings(q, path)

    x_fq = q.get_submodule("x.output_fake_quant")
    assert x_fq.dtype == fxquant.quint8 and int(x_fq.zero_point) == 100
    assert float(x_fq.scale) == float(np.float32(x_scale))
    w_fq = q.get_submodule("conv.weight_fake_quant")
    assert w_fq.zero_point.tolist() == [0, 0]
    assert w_fq.scale.tolist() == [float(np.float32(s)) for s in conv_scales]
    out_fq = q.get_submodule("conv.output_fake_quant")
    delta = (out_max - out_min) / 255  # aimet_common.quantsim.calculate_delta_offset
    assert float(out_fq.scale) == float(np.float32(delta))
    assert int(out_fq.zero_point) == -round(out_min / delta)
    with torch.no_grad():
        assert torch.isfinite(q(DATA[0])).all()


def test_aimet_strict_symmetric_and_v1_string_bools(tmp_path):
    q = fxquant.prepare(_aimet_conv_model(), DATA[0], backend="tensorrt")  # narrow weights
    s = 0.01
    legacy = {
        "version": "0.6.1",
        "activation_encodings": {},
        "param_encodings": {  # AIMET strict symmetric: offset -127, 254 steps
            "conv.weight": [
                {
                    "bitwidth": 8,
                    "dtype": "int",
                    "is_symmetric": "True",
                    "min": -127 * s,
                    "max": 127 * s,
                    "offset": -127,
                    "scale": s,
                }
            ]
            * 2
        },
    }
    (tmp_path / "a.json").write_text(json.dumps(legacy))
    load_encodings(q, tmp_path / "a.json")
    assert q.get_submodule("conv.weight_fake_quant").zero_point.tolist() == [0, 0]

    v1 = {
        "version": "1.0.0",
        "activation_encodings": [
            {
                "name": "x",
                "dtype": "INT",
                "enc_type": "PER_TENSOR",
                "bw": 8,
                "is_sym": "True",
                "scale": [0.02],
                "offset": [-128.0],
            }
        ],
        "param_encodings": [],
    }
    (tmp_path / "b.json").write_text(json.dumps(v1))
    load_encodings(q, tmp_path / "b.json")
    x_fq = q.get_submodule("x.output_fake_quant")
    assert int(x_fq.zero_point) == 0 and float(x_fq.scale) == float(np.float32(0.02))


def test_freeze_keeps_loaded_ranges_in_qat(tmp_path):
    ref = _calibrated()
    export_encodings(ref, tmp_path / "e.json")
    fresh = _prepare()
    load_encodings(fresh, tmp_path / "e.json")
    before = {n: fq.scale.clone() for n, fq in _quantizers(fresh).items()}
    fxquant.set_fake_quantize(fresh, FakeQuantState.QAT)
    fresh.train()(DATA[1] * 5)
    assert all(torch.equal(fq.scale, before[n]) for n, fq in _quantizers(fresh).items())

    unfrozen = _prepare()
    load_encodings(unfrozen, tmp_path / "e.json", freeze=False)
    assert all(
        fq.state is FakeQuantState.QAT and not fq.fixed_in_qat
        for fq in _quantizers(unfrozen).values()
    )
    assert all(bool(fq.calibrated) for fq in _quantizers(unfrozen).values())


# -- errors ------------------------------------------------------------------------------------
def _exported(tmp_path, version="0.6.1") -> tuple[dict, os.PathLike]:
    path = tmp_path / "ok.json"
    return export_encodings(_calibrated(), path, version=version), path


def _untouched(q) -> bool:
    return not any(bool(fq.calibrated) for fq in _quantizers(q).values())


def test_malformed_files(tmp_path):
    q = _prepare()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EncodingsError, match="not valid JSON"):
        load_encodings(q, bad)
    bad.write_text("[]")
    with pytest.raises(EncodingsError, match="JSON object"):
        load_encodings(q, bad)
    bad.write_text(json.dumps({"version": "0.6.1"}))
    with pytest.raises(EncodingsError, match="neither"):
        load_encodings(q, bad)
    bad.write_text(json.dumps({"version": "2.0.0", "activation_encodings": []}))
    with pytest.raises(EncodingsError, match=r"version '2\.0\.0' is not supported"):
        load_encodings(q, bad)
    bad.write_text(json.dumps({"activation_encodings": {"x": [{"dtype": "int", "scale": 1}]}}))
    with pytest.raises(EncodingsError, match=r"tensor 'x'.*bitwidth"):
        load_encodings(q, bad)
    bad.write_text(json.dumps({"activation_encodings": {"x": [{"bitwidth": 8, "offset": 0}]}}))
    with pytest.raises(EncodingsError, match=r"tensor 'x'.*'scale' and 'offset', or 'min'"):
        load_encodings(q, bad)
    bad.write_text(
        json.dumps(
            {
                "activation_encodings": {
                    "x": [{"bitwidth": 8, "is_symmetric": "maybe", "scale": 1.0, "offset": 0}]
                }
            }
        )
    )
    with pytest.raises(EncodingsError, match="tensor 'x' is_symmetric"):
        load_encodings(q, bad)
    bad.write_text(
        json.dumps(
            {
                "activation_encodings": {
                    "x": [{"bitwidth": 8, "is_symmetric": "True", "scale": -1.0, "offset": -128}]
                }
            }
        )
    )
    with pytest.raises(EncodingsError, match=r"tensor 'x'.*positive"):
        load_encodings(q, bad)
    assert _untouched(q)


def test_unknown_names_strict_and_lenient(tmp_path):
    enc, _ = _exported(tmp_path)
    enc["activation_encodings"]["ghost_tensor"] = enc["activation_encodings"]["x"]
    path = tmp_path / "extra.json"
    path.write_text(json.dumps(enc))
    q = _prepare()
    with pytest.raises(EncodingsError, match="ghost_tensor"):
        load_encodings(q, path)
    assert _untouched(q)
    with pytest.warns(UserWarning, match="ghost_tensor"):
        load_encodings(q, path, strict=False)
    assert all(bool(fq.calibrated) for fq in _quantizers(q).values())


def test_bitwidth_and_symmetry_mismatch(tmp_path):
    enc, _ = _exported(tmp_path)
    for e in enc["param_encodings"]["conv2.weight"]:
        e["bitwidth"] = 4  # offsets -128 are outside a 4-bit grid: fix them too
        e["offset"] = -8
    path = tmp_path / "bw.json"
    path.write_text(json.dumps(enc))
    q = _prepare()
    with pytest.raises(EncodingsError, match=r"tensor 'conv2\.weight'.*bitwidth 4 != 8"):
        load_encodings(q, path)
    assert _untouched(q)
    load_encodings(q, path, strict=False)
    w = q.get_submodule("conv2.weight_fake_quant")
    assert w.dtype == fxquant.qint4 and w.zero_point.tolist() == [0] * 4

    enc, _ = _exported(tmp_path)
    enc["activation_encodings"]["x"][0]["is_symmetric"] = "False"
    path.write_text(json.dumps(enc))
    with pytest.raises(EncodingsError, match=r"tensor 'x'.*file is asymmetric, quantizer is symm"):
        load_encodings(_prepare(), path)
    q = _prepare()
    load_encodings(q, path, strict=False)
    assert q.get_submodule("x.output_fake_quant").symmetric is False


def test_channel_count_mismatch(tmp_path):
    enc, path = _exported(tmp_path)
    enc["param_encodings"]["conv2.weight"] = enc["param_encodings"]["conv2.weight"][:3]
    path.write_text(json.dumps(enc))
    with pytest.raises(EncodingsError, match=r"tensor 'conv2\.weight'.*3 encodings.*4 channels"):
        load_encodings(_prepare(), path)


def test_export_needs_calibration(tmp_path):
    with pytest.raises(EncodingsError, match=r"without a scale.*conv1\.weight"):
        export_encodings(_prepare(), tmp_path / "e.json")
    assert not (tmp_path / "e.json").exists()
    with pytest.raises(ValueError, match="version"):
        export_encodings(_calibrated(), tmp_path / "e.json", version="0.5.0")


def test_unwritable_path_leaves_no_file(tmp_path):
    q = _calibrated()
    target = tmp_path / "missing_dir" / "e.json"
    with pytest.raises(EncodingsError, match=r"missing_dir.*does not exist"):
        export_encodings(q, target)
    assert not target.exists() and not target.parent.exists()
    folder = tmp_path / "is_a_dir"
    folder.mkdir()
    with pytest.raises(EncodingsError, match="is a folder"):
        export_encodings(q, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["is_a_dir"]  # no temp file left
    # a failed export never clobbers an existing file
    good = tmp_path / "good.json"
    export_encodings(q, good)
    before = good.read_bytes()
    with pytest.raises(EncodingsError):
        export_encodings(_prepare(), good)
    assert good.read_bytes() == before


def test_onnx_name_check_with_a_hand_built_graph(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    q = _calibrated()
    names = sorted(export_encodings(q, None)["activation_encodings"])
    params = sorted(export_encodings(q, None)["param_encodings"])
    present = [n for n in names if n != "fc"]
    nodes = [helper.make_node("Identity", ["x"], [n]) for n in present if n != "x"]
    inits = [helper.make_tensor(p, TensorProto.FLOAT, [1], [0.0]) for p in params]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [], inits
    )
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(EncodingsError,
                       match=r"1 encodings tensor name\(s\) do not exist.*: 'fc'; was it"):
        export_encodings(q, tmp_path / "e.json", onnx_path=path)
    assert not (tmp_path / "e.json").exists()


_HAS_EXPORTER = importlib.util.find_spec("fxquant.export.onnx_export") is not None


@pytest.mark.skipif(
    not _HAS_EXPORTER, reason="fxquant.export.onnx_export (export_onnx) is not in this tree yet"
)
@pytest.mark.parametrize(("quantize", "backend", "kind"), [
    (True, "generic", "mixed16"), (False, "x86", "default"),
    pytest.param(True, "x86", "default", marks=pytest.mark.slow),
    pytest.param(False, "generic", "mixed16", marks=pytest.mark.slow),
])
def test_names_exist_in_exported_onnx(tmp_path, quantize, backend, kind):
    from fxquant.export.onnx_export import export_onnx

    q = _calibrated(backend, kind)
    onnx_path = tmp_path / "m.onnx"
    export_onnx(q, DATA[0], onnx_path, quantize=quantize)
    for version in VERSIONS:
        export_encodings(q, tmp_path / f"{version}.json", onnx_path=onnx_path, version=version)
