"""fxquant.runtime_math.ort against the real ONNX Runtime kernels, code for code.

Each case builds the QDQ pattern ORT fuses (``DQ -> op -> Q``), checks that ORT did fuse it into
the kernel under test (its optimized graph), runs it on random codes and compares every output
code with the emulation.  Fixed-seed sweeps over scales, zero points, shapes and broadcasting; the
tie cases pin the two rounding conventions (rounding before / after the output zero point).  The
exact arithmetic is shown to differ on some of the same elements: the emulation is what makes the
codes identical.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from fxquant.numerics import native
from fxquant.runtime_math import ort as ort_math

ort = pytest.importorskip("onnxruntime")
F32 = np.float32


def _run(nodes, inputs: dict[str, np.ndarray], inits, tmp_path, opset: int = 13) -> tuple:
    """Run a one-output graph (``yq``, uint8) in ORT: (codes, optimized op types)."""
    vi = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype),
                                        [None] * v.ndim) for k, v in inputs.items()]
    out = helper.make_tensor_value_info("yq", TensorProto.UINT8, None)
    graph = helper.make_graph(nodes, "g", vi, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    opt = str(tmp_path / "optimized.onnx")
    so.optimized_model_filepath = opt
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    y = sess.run(None, inputs)[0].astype(np.int64)
    return y, [n.op_type for n in onnx.load(opt).graph.node]


def _init(value, name, dtype=F32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _t(v, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.asarray(v)).to(dtype)


def _dq_q(op_nodes, inputs, sx, zx, sy, zy):
    """DequantizeLinear of each input, then ``op_nodes`` (reading ``<i>d``, writing ``y``), then
    QuantizeLinear."""
    nodes = [helper.make_node("DequantizeLinear", [k, f"s{k}", f"z{k}"], [f"{k}d"])
             for k in inputs]
    nodes += [*op_nodes, helper.make_node("QuantizeLinear", ["y", "sy", "zy"], ["yq"])]
    inits = [_init(sy, "sy"), _init(zy, "zy", np.uint8)]
    for k in inputs:
        inits += [_init(sx[k], f"s{k}"), _init(zx[k], f"z{k}", np.uint8)]
    return nodes, inits


def _binary_case(op, a, b, sa, za, sb, zb, sc, zc, tmp_path):
    nodes, inits = _dq_q([helper.make_node(op, ["ad", "bd"], ["y"])], {"a": a, "b": b},
                         {"a": sa, "b": sb}, {"a": za, "b": zb}, sc, zc)
    y, ops = _run(nodes, {"a": a, "b": b}, inits, tmp_path)
    fn = ort_math.qlinear_add if op == "Add" else ort_math.qlinear_mul
    got = fn(_t(a), _t(sa), za, _t(b), _t(sb), zb, _t(sc), zc, 0, 255).numpy().astype(np.int64)
    ratio = lambda s: float(F32(s)) / float(F32(sc))  # noqa: E731
    da, db = (a.astype(np.float64) - za), (b.astype(np.float64) - zb)
    exact = da * ratio(sa) + db * ratio(sb) if op == "Add" else \
        da * db * float(F32(sa)) * float(F32(sb)) / float(F32(sc))
    exact_codes = np.clip(np.rint(exact) + zc, 0, 255)
    return int((got != y).sum()), int((exact_codes != y).sum()), ops


def _rand_codes(rng, *shape):
    return rng.integers(0, 256, shape).astype(np.uint8)


def test_qlinear_add_matches_ort_code_for_code(tmp_path):
    rng = np.random.default_rng(0)
    mism, exact_mism = 0, 0
    for _ in range(12):
        sa, sb, sc = (F32(rng.uniform(0.005, 0.1)) for _ in range(3))
        za, zb, zc = (int(rng.integers(0, 256)) for _ in range(3))
        m, e, ops = _binary_case("Add", _rand_codes(rng, 250_000), _rand_codes(rng, 250_000),
                                 sa, za, sb, zb, sc, zc, tmp_path)
        assert "QLinearAdd" in ops
        mism, exact_mism = mism + m, exact_mism + e
    # scales of a transformer residual add where exact ties (x.5 in float32) are frequent
    m, e, _ = _binary_case("Add", _rand_codes(rng, 10**6), _rand_codes(rng, 10**6),
                           F32(0.030116422), 116, F32(0.007134651), 124, F32(0.029289216), 114,
                           tmp_path)
    assert m == 0 and mism == 0, (m, mism)
    assert e > 0 and exact_mism > 0  # exact arithmetic is *not* what ORT computes


@pytest.mark.parametrize("zc", [145, 144])
def test_qlinear_add_rounds_after_the_output_zero_point(zc, tmp_path):
    """The residual-add flip of MobileNetV2 (features.5): scales whose ratio makes ``x.5`` ties
    common.  ORT rounds ``v + zc`` to the even *code*; rounding ``v`` first and then adding an
    odd zero point (what the float simulation's QuantizeLinear does) gives the other code."""
    rng = np.random.default_rng(5)
    sa, za, sb, zb, sc = F32(0.03425245), 126, F32(0.0354473), 126, F32(0.05355392)
    a, b = _rand_codes(rng, 400_000), _rand_codes(rng, 400_000)
    m, _, ops = _binary_case("Add", a, b, sa, za, sb, zb, sc, zc, tmp_path)
    assert "QLinearAdd" in ops and m == 0
    v = ort_math.qlinear_add_value(_t(a), _t(sa), za, _t(b), _t(sb), zb, _t(sc), zc)
    inside = (v > 0) & (v < 255)
    ties = ((v - v.floor()) == 0.5) & inside
    assert int(ties.sum()) > 100
    ort_codes = torch.round(v).clamp(0, 255)  # == ORT (m == 0 above)
    rounded_first = (torch.round(v - zc) + zc).clamp(0, 255)
    if zc % 2:  # an odd zero point: rounding before adding it differs at every tie
        assert bool((ort_codes != rounded_first)[ties].all())
    else:
        assert torch.equal(ort_codes, rounded_first)


@pytest.mark.parametrize("shapes", [((4, 8, 5, 7), (4, 8, 1, 1)), ((4, 8, 1, 1), (4, 8, 5, 7)),
                                    ((6, 40), (1, 40)), ((3, 1, 30), (3, 20, 30)),
                                    ((2, 3, 16), (16,)), ((2, 3, 1), (2, 1, 9))])
@pytest.mark.parametrize("op", ["Add", "Mul"])
def test_broadcasting_matches_ort(op, shapes, tmp_path):
    """A broadcast operand that is constant along the innermost dimension is a per-span scalar
    for MLAS: its term joins QLinearAdd's fixed part (no fma), and a broadcast first input is
    swapped into MLAS's second operand."""
    rng = np.random.default_rng(7)
    total = 0
    for _ in range(4):
        sa, sb, sc = (F32(rng.uniform(0.005, 0.1)) for _ in range(3))
        za, zb, zc = (int(rng.integers(0, 256)) for _ in range(3))
        a, b = _rand_codes(rng, *shapes[0]), _rand_codes(rng, *shapes[1])
        m, _, ops = _binary_case(op, a, b, sa, za, sb, zb, sc, zc, tmp_path)
        assert f"QLinear{op}" in ops
        total += m
    assert total == 0


def test_qlinear_mul_matches_ort(tmp_path):
    rng = np.random.default_rng(8)
    mism, exact_mism = 0, 0
    for _ in range(10):
        sa, sb = (F32(rng.uniform(0.005, 0.1)) for _ in range(2))
        sc = F32(rng.uniform(0.05, 0.5))
        za, zb, zc = (int(rng.integers(0, 256)) for _ in range(3))
        m, e, ops = _binary_case("Mul", _rand_codes(rng, 100_000), _rand_codes(rng, 100_000),
                                 sa, za, sb, zb, sc, zc, tmp_path)
        assert "QLinearMul" in ops
        mism, exact_mism = mism + m, exact_mism + e
    # a ratio of 1/2 and an odd output zero point: every odd product is a tie, rounded with zc
    m, e, _ = _binary_case("Mul", _rand_codes(rng, 50_000), _rand_codes(rng, 50_000),
                           F32(0.5), 128, F32(0.25), 128, F32(64.0), 101, tmp_path)
    assert mism == 0 and m == 0
    assert e > 0


def _weighted(kind, rng, tmp_path):
    o, c = 24, 32
    sx, sy = F32(rng.uniform(0.005, 0.05)), F32(rng.uniform(0.01, 0.3))
    zx, zy = int(rng.integers(0, 60)), int(rng.integers(0, 60))
    sw = rng.uniform(0.001, 0.02, o).astype(F32)
    bq = rng.integers(-20000, 20000, o).astype(np.int32)
    if kind == "conv":
        wq = rng.integers(-127, 128, (o, c, 3, 3)).astype(np.int8)
        x = rng.integers(0, 256, (4, c, 10, 10)).astype(np.uint8)
        op = helper.make_node("Conv", ["xd", "wd", "bd"], ["y"], pads=[1, 1, 1, 1])
    else:
        wq = rng.integers(-127, 128, (o, c * 8)).astype(np.int8)
        x = rng.integers(0, 256, (512, c * 8)).astype(np.uint8)
        op = helper.make_node("Gemm", ["xd", "wd", "bd"], ["y"], transB=1)
    nodes = [helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bd"], axis=0), op,
             helper.make_node("QuantizeLinear", ["y", "sy", "zy"], ["yq"])]
    inits = [_init(sx, "sx"), _init(zx, "zx", np.uint8), _init(sy, "sy"),
             _init(zy, "zy", np.uint8), _init(wq, "w", np.int8), _init(sw, "sw"),
             _init(np.zeros(o), "zw", np.int8), _init(bq, "b", np.int32),
             _init(sx * sw, "sb"), _init(np.zeros(o), "zb", np.int32)]
    y, ops = _run(nodes, {"x": x}, inits, tmp_path)
    xc, wc = _t(x, torch.float64) - zx, _t(wq, torch.float64)
    if kind == "conv":
        acc = torch.nn.functional.conv2d(xc, wc, _t(bq, torch.float64), padding=1)
        mult = ort_math.requantize_multiplier(_t(sx), _t(sw), _t(sy)).reshape(-1, 1, 1)
    else:
        acc = xc @ wc.T + _t(bq, torch.float64)
        mult = ort_math.requantize_multiplier(_t(sx), _t(sw), _t(sy))
    got = ort_math.requantize(acc.float(), mult, zy, 0, 255).numpy()
    return int((got != y).sum()), ops


@pytest.mark.parametrize("kind", ["conv", "gemm"])
def test_requantize_matches_qlinearconv_and_qgemm(kind, tmp_path):
    rng = np.random.default_rng(1)
    for _ in range(6):
        mism, ops = _weighted(kind, rng, tmp_path)
        assert ("QLinearConv" if kind == "conv" else "QGemm") in ops
        assert mism == 0


def test_requantize_matches_qlinearmatmul(tmp_path):
    rng = np.random.default_rng(2)
    total = 0
    for _ in range(8):
        sa, sb, sy = (F32(rng.uniform(0.005, 0.1)) for _ in range(3))
        za, zb, zy = (int(rng.integers(0, 256)) for _ in range(3))
        a, b = _rand_codes(rng, 8, 4, 12, 16), _rand_codes(rng, 8, 4, 16, 12)
        nodes, inits = _dq_q([helper.make_node("MatMul", ["ad", "bd"], ["y"])], {"a": a, "b": b},
                             {"a": sa, "b": sb}, {"a": za, "b": zb}, sy, zy)
        y, ops = _run(nodes, {"a": a, "b": b}, inits, tmp_path)
        assert "QLinearMatMul" in ops
        acc = (_t(a) - za) @ (_t(b) - zb)
        mult = ort_math.requantize_multiplier(_t(sa), _t(sb), _t(sy))
        total += int((ort_math.requantize(acc, mult, zy, 0, 255).numpy() != y).sum())
    assert total == 0


def test_matmul_integer_to_float_matches_ort(tmp_path):
    """A Linear on 3-D input: DQ(x), DQ(w per channel) -> MatMul -> float bias Add -> Q; ORT runs
    MatMulIntegerToFloat (``float32(acc) * (sx * sw)``) then the float Add."""
    rng = np.random.default_rng(4)
    total = 0
    for _ in range(5):
        sx, sy = F32(rng.uniform(0.005, 0.05)), F32(rng.uniform(0.01, 0.2))
        zx, zy = int(rng.integers(0, 256)), int(rng.integers(0, 256))
        k, o = 48, 20
        sw = rng.uniform(0.001, 0.02, o).astype(F32)
        wq = rng.integers(-127, 128, (k, o)).astype(np.int8)  # MatMul's [K, N] layout
        bias = rng.normal(0, 0.3, o).astype(F32)
        x = _rand_codes(rng, 16, 9, k)
        nodes = [helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xd"]),
                 helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], axis=1),
                 helper.make_node("MatMul", ["xd", "wd"], ["m"]),
                 helper.make_node("Add", ["m", "bias"], ["y"]),
                 helper.make_node("QuantizeLinear", ["y", "sy", "zy"], ["yq"])]
        inits = [_init(sx, "sx"), _init(zx, "zx", np.uint8), _init(sy, "sy"),
                 _init(zy, "zy", np.uint8), _init(wq, "w", np.int8), _init(sw, "sw"),
                 _init(np.zeros(o), "zw", np.int8), _init(bias, "bias")]
        y, ops = _run(nodes, {"x": x}, inits, tmp_path)
        assert "MatMulIntegerToFloat" in ops
        acc = (_t(x) - zx) @ _t(wq)
        v = acc * (_t(sx) * _t(sw)) + _t(bias)
        got = torch.round(v / _t(sy)).add_(zy).clamp_(0, 255).numpy()
        total += int((got != y).sum())
    assert total == 0


def test_global_average_pool_matches_qlinearglobalaveragepool(tmp_path):
    rng = np.random.default_rng(3)
    total = 0
    for hw in (2, 4, 7, 8):
        sx, sy = F32(rng.uniform(0.01, 0.1)), F32(rng.uniform(0.005, 0.05))
        zx, zy = int(rng.integers(0, 60)), int(rng.integers(0, 60))
        x = rng.integers(0, 256, (64, 64, hw, hw)).astype(np.uint8)
        nodes, inits = _dq_q([helper.make_node("GlobalAveragePool", ["xd"], ["y"])], {"x": x},
                             {"x": sx}, {"x": zx}, sy, zy)
        y, ops = _run(nodes, {"x": x}, inits, tmp_path)
        assert "QLinearGlobalAveragePool" in ops
        v = ort_math.global_average_pool(_t(x).sum((2, 3), keepdim=True), hw * hw, _t(sx), zx,
                                         _t(sy), zy, 0, 255)
        total += int((v.numpy() != y).sum())
    assert total == 0


@pytest.mark.parametrize(("kernel", "stride", "pad", "include"),
                         [(2, 2, 0, 1), (3, 1, 1, 1), (3, 2, 1, 0), (5, 2, 2, 1)])
def test_average_pool_matches_qlinearaveragepool(kernel, stride, pad, include, tmp_path):
    """QLinearAveragePool sums the dequantized window in float32, in row-major order, divides,
    and rounds ``y / sy + zy`` -- the zero point included."""
    rng = np.random.default_rng(9)
    total = 0
    for _ in range(4):
        sx, sy = F32(rng.uniform(0.01, 0.1)), F32(rng.uniform(0.005, 0.1))
        zx, zy = int(rng.integers(0, 256)), int(rng.integers(0, 256))
        x = _rand_codes(rng, 8, 16, 13, 11)
        op = helper.make_node("AveragePool", ["xd"], ["y"], kernel_shape=[kernel, kernel],
                              strides=[stride, stride], pads=[pad] * 4,
                              count_include_pad=include)
        nodes, inits = _dq_q([op], {"x": x}, {"x": sx}, {"x": zx}, sy, zy)
        y, ops = _run(nodes, {"x": x}, inits, tmp_path)
        assert "QLinearAveragePool" in ops
        xd = (_t(x) - zx) * _t(sx)
        got = ort_math.average_pool(xd, (kernel,) * 2, (stride,) * 2, (pad,) * 2, bool(include),
                                    _t(sy), zy, 0, 255)
        total += int((got.numpy() != y).sum())
    assert total == 0


def test_average_pool_rounds_after_the_output_zero_point(tmp_path):
    """A 2x2 mean of codes on equal scales has ``x.5`` ties; with an odd output zero point ORT's
    ``nearbyint(y / sy + zy)`` and QuantizeLinear's ``round(y / sy) + zy`` differ there."""
    rng = np.random.default_rng(10)
    x = _rand_codes(rng, 8, 16, 12, 12)
    s, zx, zy = F32(0.05), 128, 101
    op = helper.make_node("AveragePool", ["xd"], ["y"], kernel_shape=[2, 2], strides=[2, 2])
    nodes, inits = _dq_q([op], {"x": x}, {"x": s}, {"x": zx}, s, zy)
    y, ops = _run(nodes, {"x": x}, inits, tmp_path)
    assert "QLinearAveragePool" in ops
    xd = (_t(x) - zx) * _t(s)
    got = ort_math.average_pool(xd, (2, 2), (2, 2), (0, 0), True, _t(s), zy, 0, 255).numpy()
    assert int((got != y).sum()) == 0
    quantize_linear = (torch.round(torch.nn.functional.avg_pool2d(xd, 2) / _t(s)) + zy)
    assert int((quantize_linear.clamp(0, 255).numpy() != y).sum()) > 100


def test_logistic_matches_ort_sigmoid_bit_for_bit(tmp_path):
    """ORT's float Sigmoid is MLAS's logistic approximation: the emulation equals it bit for bit,
    ``torch.sigmoid`` does not."""
    x = np.random.default_rng(12).uniform(-20, 20, 1_000_000).astype(F32)
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0]
    assert np.array_equal(ort_math.logistic(_t(x)).numpy(), y)
    with native.native_kernels(False):
        assert np.array_equal(ort_math.logistic(_t(x)).numpy(), y)
    assert not np.array_equal(torch.sigmoid(_t(x)).numpy(), y)


def test_sigmoid_lookup_table_matches_qlinearsigmoid(tmp_path):
    rng = np.random.default_rng(11)
    total = 0
    for _ in range(20):
        sx, sy = F32(rng.uniform(0.01, 0.2)), F32(rng.uniform(0.5, 1.5) / 255)
        zx, zy = int(rng.integers(0, 256)), int(rng.integers(0, 40))
        x = np.arange(256, dtype=np.uint8)
        nodes, inits = _dq_q([helper.make_node("Sigmoid", ["xd"], ["y"])], {"x": x}, {"x": sx},
                             {"x": zx}, sy, zy)
        y, ops = _run(nodes, {"x": x}, inits, tmp_path)
        assert "QLinearSigmoid" in ops
        table = ort_math.lookup_table(ort_math.logistic, _t(sx), zx, 0, 255, _t(sy), zy, 0, 255)
        total += int((table.numpy() != y).sum())
    assert total == 0


def test_broadcast_roles():
    assert ort_math.broadcast_roles((2, 3), (2, 3)) == "vector"
    assert ort_math.broadcast_roles((2, 3, 4), (2, 3, 1)) == "scalar_b"
    assert ort_math.broadcast_roles((2, 1, 1), (2, 3, 4)) == "scalar_a"
    assert ort_math.broadcast_roles((2, 3, 1), (2, 3, 1)) == "vector"
    assert ort_math.broadcast_roles((1, 4), (3, 4)) == "vector"


@pytest.mark.parametrize("n", [2, 3, 4, 5, 9, 12, 25, 49, 64, 196])
def test_reduce_mean_matches_ort_float_reduce_mean(n, tmp_path):
    """ORT's float ReduceMean over trailing axes (a spatial mean, ``x.mean((2, 3))``): Eigen's
    SSE summation order, which depends on each row's alignment -- not torch's."""
    x = np.random.default_rng(n).standard_normal((3, 37, n)).astype(F32)
    graph = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["y"], axes=[2],
                                                keepdims=0)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0]
    got = ort_math.reduce_mean_trailing(_t(x), n).reshape(3, 37).numpy()
    assert np.array_equal(got, y)
    if n in (5, 9, 25, 49):
        assert not np.array_equal(_t(x).mean(-1).numpy(), y)


def test_silu_matches_ort_sigmoid_times_x():
    """SiLU as exported (``Mul(x, Sigmoid(x))``) in ORT's float kernels, bit for bit."""
    from fxquant.runtime_math.kernels import FLOAT_FUNCTIONS

    x = np.random.default_rng(13).uniform(-12, 12, 200_000).astype(F32)
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["s"]),
                               helper.make_node("Mul", ["x", "s"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0]
    assert np.array_equal(FLOAT_FUNCTIONS["Sigmoid*x"](_t(x)).numpy(), y)  # native pass
    with native.native_kernels(False):  # torch operations, each fma through float64
        assert np.array_equal(FLOAT_FUNCTIONS["Sigmoid*x"](_t(x)).numpy(), y)


def test_native_qlinear_add_is_the_emulation_on_same_shape_inputs():
    """The one-pass native QLinearAdd (true fmas) gives the codes of the float64-emulated
    qlinear_add, dequantized, over every pair of 8-bit codes and on several grids."""
    if not native.available():
        pytest.skip(f"native kernels unavailable: {native.why_unavailable()}")
    qa, qb = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    for sa, za, sb, zb, sc, zc in ((0.0213, 131, 0.0377, 97, 0.0519, 120),
                                   (0.5, 0, 0.25, 0, 0.7, 0), (0.013, 3, 0.013, 3, 0.026, 5),
                                   (0.1, 128, 0.003, 128, 0.09, 100)):
        s = torch.tensor([sa, sb, sc])
        a, b = (qa - za) * s[0], (qb - zb) * s[1]
        got = ort_math.qlinear_add_dequantized(a.contiguous(), s[0], za, b.contiguous(), s[1], zb,
                                          s[2], zc, 0, 255)
        codes = ort_math.qlinear_add(qa, s[0], za, qb, s[1], zb, s[2], zc, 0, 255)
        assert got is not None
        assert torch.equal(got, (codes - zc) * s[2]), (sa, sb, sc)
    # a row broadcast along the outer dimension (a positional embedding): expanded, the same
    # codes as the emulation; a per-row scalar (MLAS's scalar operand) is left to the emulation
    got = ort_math.qlinear_add_dequantized(a, s[0], za, b[:1], s[1], zb, s[2], zc, 0, 255)
    codes = ort_math.qlinear_add(qa, s[0], za, qb[:1], s[1], zb, s[2], zc, 0, 255)
    assert got is not None and got.shape == a.shape
    assert torch.equal(got, (codes - zc) * s[2])
    assert ort_math.qlinear_add_dequantized(a, s[0], 0, b[:, :1], s[1], 0, s[2], 0, 0, 255) is None


def test_qlinear_mul_in_place_is_the_emulation_on_every_code_pair():
    """QLinearMul from the centred codes, in place with one native rounding pass, gives
    :func:`qlinear_mul`'s codes dequantized -- every pair of 8-bit codes, tie-heavy grids, and a
    per-channel broadcast operand (a squeeze-excitation scale) on either side."""
    qa, qb = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    for sa, za, sb, zb, sc, zc in ((0.0213, 131, 0.0377, 97, 0.0519, 120),
                                   (0.5, 128, 0.25, 128, 64.0, 101), (0.013, 3, 0.02, 0, 0.03, 0)):
        s = torch.tensor([sa, sb, sc])
        ratio = ort_math.requantize_multiplier(s[0], s[1], s[2])
        want = (ort_math.qlinear_mul(qa, s[0], za, qb, s[1], zb, s[2], zc, 0, 255) - zc) * s[2]
        got = ort_math.qlinear_mul_dequantized(qa - za, qb - zb, ratio, s[2], zc, 0, 255)
        assert torch.equal(got, want), (sa, sb, sc)
        for a_codes, b_codes in ((qa, qb[:1]), (qa[:, :1], qb)):  # broadcast b, then a
            want = (ort_math.qlinear_mul(a_codes, s[0], za, b_codes, s[1], zb, s[2], zc, 0,
                                         255) - zc) * s[2]
            got = ort_math.qlinear_mul_dequantized(a_codes - za, b_codes - zb, ratio, s[2], zc,
                                                   0, 255)
            assert torch.equal(got, want)
        with native.native_kernels(False):  # the pure-torch rounding: the same bits
            got = ort_math.qlinear_mul_dequantized(qa - za, qb - zb, ratio, s[2], zc, 0, 255)
            assert torch.equal(got, (ort_math.qlinear_mul(qa, s[0], za, qb, s[1], zb, s[2], zc,
                                                          0, 255) - zc) * s[2])


def test_batch_norm_matches_ort_bit_for_bit():
    """ORT's float BatchNormalization: x * s + t with s and t per channel in float32, no fma --
    torch's batch_norm rounds differently."""
    rng = np.random.default_rng(21)
    c = 48
    x = ((rng.integers(0, 256, (16, c, 6, 6)) - 9) * 0.0373).astype(F32)
    for affine in (True, False):
        stats = [rng.uniform(-1, 1, c).astype(F32), rng.uniform(0.05, 3, c).astype(F32)]
        gamma, beta = (rng.uniform(0.5, 2, c).astype(F32), rng.uniform(-1, 1, c).astype(F32))
        if not affine:
            gamma, beta = np.ones(c, F32), np.zeros(c, F32)
        inits = [numpy_helper.from_array(a, n) for a, n in
                 ((gamma, "s"), (beta, "b"), (stats[0], "m"), (stats[1], "v"))]
        node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                                epsilon=1e-3)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, None)], [helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, None)], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)],
                                  ir_version=8)
        sess = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        y = sess.run(None, {"x": x})[0]
        weight = _t(gamma) if affine else None
        bias = _t(beta) if affine else None
        got = ort_math.batch_norm(_t(x), _t(stats[0]), _t(stats[1]), weight, bias, 1e-3)
        assert np.array_equal(got.numpy(), y)
        torch_bn = torch.nn.functional.batch_norm(_t(x), _t(stats[0]), _t(stats[1]), weight,
                                                  bias, False, 0.0, 1e-3)
        assert not np.array_equal(torch_bn.numpy(), y)


@pytest.mark.parametrize("size", [8, 32, 192, 768])
def test_layer_norm_matches_ort_bit_for_bit(size):
    """ORT's float LayerNormalization: float64 mean, an 8-lane fma variance sum, correctly
    rounded 1 / sqrt, fma output -- torch's layer_norm rounds differently.  Its Mean and
    InvStdDev outputs pin the steps as well as the result."""
    rng = np.random.default_rng(size)
    x = (rng.standard_normal((512, 2, size)) * 3 + 0.5).astype(F32)
    gamma, beta = rng.standard_normal(size).astype(F32), rng.standard_normal(size).astype(F32)
    for eps, affine in ((1e-5, True), (1e-6, False)):
        inits = [numpy_helper.from_array(gamma if affine else np.ones(size, F32), "g")]
        inputs = ["x", "g"]
        if affine:
            inits.append(numpy_helper.from_array(beta, "b"))
            inputs.append("b")
        node = helper.make_node("LayerNormalization", inputs, ["y"], axis=-1, epsilon=eps)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, None)], [helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, None)], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])
        y = sess.run(None, {"x": x})[0]
        weight, bias = (_t(gamma), _t(beta)) if affine else (None, None)
        got = ort_math.layer_norm(_t(x), weight, bias, eps, size)  # native kernel
        assert np.array_equal(got.numpy(), y)
        with native.native_kernels(False):  # the torch emulation
            assert np.array_equal(ort_math.layer_norm(_t(x), weight, bias, eps, size).numpy(), y)
        if size >= 32:
            torch_ln = torch.nn.functional.layer_norm(_t(x), (size,), weight, bias, eps)
            assert not np.array_equal(torch_ln.numpy(), y)


def test_layer_norm_refuses_sizes_whose_ort_path_is_not_reproduced():
    with pytest.raises(ValueError, match="not a multiple of 8"):
        ort_math.layer_norm(torch.randn(2, 12), None, None, 1e-5, 12)
