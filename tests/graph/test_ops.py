"""The op-trait table: one source for kinds, weight axes, CLE traits, clip bounds, native
kernels and MACs; the views derived from it agree with it."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant import nn as qnn
from fxquant.convert.tables import NATIVE_MISSING
from fxquant.graph import ops, patterns
from fxquant.qconfig import OpKind


def test_derived_views_agree_with_the_table():
    assert patterns.MODULE_KINDS == {t: tr.kind for t, tr in ops.MODULE_TRAITS.items()}
    assert patterns.WEIGHT_ARG == {F.linear: 1, F.conv1d: 1, F.conv2d: 1, F.conv3d: 1,
                                   torch.addmm: 2}
    assert patterns.FUNCTIONAL_WEIGHT_AXIS == {torch.addmm: 1}
    for t in qnn.FLOAT_TO_QUANT:  # module weight axes come from fxquant.nn, their owner
        assert ops.MODULE_TRAITS[t].weight_axis == qnn.WEIGHT_AXIS[t]
    assert NATIVE_MISSING == {"qnnpack": frozenset({F.max_pool3d, nn.MaxPool3d})}
    assert ops.function_traits(operator.iadd).name == "add" == ops.method_traits("add_").name
    assert ops.function_traits([]) is ops.UNKNOWN  # unhashable targets are unknown


@pytest.mark.parametrize(
    "module, x, macs",
    [
        (nn.Conv2d(3, 8, 3), torch.randn(2, 3, 6, 6), 2 * 8 * 4 * 4 * 3 * 3 * 3),
        (nn.ConvTranspose2d(4, 2, 3), torch.randn(1, 4, 5, 5), 4 * 5 * 5 * 2 * 3 * 3),
        (nn.Linear(6, 5), torch.randn(3, 7, 6), 3 * 7 * 5 * 6),
        (nn.Embedding(10, 4), torch.tensor([[1, 2, 3]]), 0),  # a lookup multiplies nothing
    ],
    ids=["conv", "conv_transpose", "linear", "embedding"],
)
def test_one_mac_counter(module, x, macs):
    out = module(x)
    assert ops.count_macs(ops.module_traits(module), module.weight, x, out) == macs
    quant = qnn.FLOAT_TO_QUANT[type(module)]
    assert ops.MODULE_TRAITS[quant].macs is ops.module_traits(module).macs


def test_the_sensitivity_flops_of_an_embedding_are_zero():
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(16, 8)
            self.fc = nn.Linear(8, 3)

        def forward(self, ids):
            return self.fc(self.emb(ids))

    ids = torch.randint(0, 16, (4, 5))
    q = fxquant.prepare(Tagger().eval(), ids, fxquant.default_calibration_qconfig_setter)
    fxquant.calibrate(q, [ids], progress=False)
    rows = {(r.op_name, r.kind): r.flops
            for r in fxquant.sensitivity(q, [ids], progress=False).rows}
    assert rows[("emb", "weight")].startswith("0(")
    assert rows[("fc", "weight")].startswith(f"{2 * 5 * 3 * 8}(")


def _node(fn, *args):
    gm = fx.symbolic_trace(fn)
    return gm, next(n for n in gm.graph.nodes if n.op in ("call_function", "call_method",
                                                          "call_module"))


def test_clip_bounds_and_cle_traits():
    gm, n = _node(lambda x: F.hardtanh(x, -2.0, 3.0))
    assert ops.clip_bounds(n, gm) == (-2.0, 3.0)
    gm, n = _node(lambda x: F.relu6(x))
    assert ops.clip_bounds(n, gm) == ops.RELU6
    gm, n = _node(nn.Sequential(nn.Hardtanh(0.0, 4.0)))
    assert ops.clip_bounds(n, gm) == (0.0, 4.0)
    gm, n = _node(lambda x: x.relu())
    assert ops.clip_bounds(n, gm) == ops.RELU and ops.node_traits(n, gm).homogeneous
    gm, n = _node(lambda x: torch.sigmoid(x))
    assert ops.clip_bounds(n, gm) is None
    pool = ops.module_traits(nn.MaxPool2d(2))
    assert pool.kind is OpKind.SHARE and pool.homogeneous and pool.shift_commutes
    assert not ops.module_traits(nn.ReLU6()).homogeneous  # clips: CLE does not cross it


def test_layer_traits_look_through_eager_subclasses():
    swapped = type("QuantizedQuantConv2d", (qnn.QuantConv2d,), {})
    m = swapped.__new__(swapped)
    assert ops.module_traits(m) is ops.UNKNOWN
    assert ops.layer_traits(m) is ops.MODULE_TRAITS[qnn.QuantConv2d]


def test_shape_reads_are_metadata_but_dtype_is_not_a_shape():
    gm = fx.symbolic_trace(lambda x: (x.shape, x.dtype, x.size(0)))
    calls = [n for n in gm.graph.nodes if n.op.startswith("call")]
    shape, dtype = (next(n for n in calls if n.args[1:] == (a,)) for a in ("shape", "dtype"))
    size = next(n for n in calls if n.target == "size")
    assert all(ops.reads_metadata_only(u) for u in (shape, dtype, size))
    assert ops.reads_shape_only(shape) and ops.reads_shape_only(size)
    assert not ops.reads_shape_only(dtype)
