"""Backend rules that tie quantizers to op types (profile data applied at prepare time).

* :func:`fix_output` -- ``BackendProfile.fixed_outputs``: ops whose runtime kernel has a fixed
  output grid (TFLite's softmax / logistic / tanh) get a fixed-scale output quantizer, whatever
  observer the qconfig names.
* :func:`share_grids` -- ``BackendProfile.same_grid_ops``: the op's output quantizer *is* its
  input's quantizer (TFLite's average pooling / resizing write their input's grid);
  ``BackendProfile.shared_grid_ops``: the op's inputs and output are quantized by one quantizer
  (TFLite's concatenation takes and writes one grid).  Sharing is module aliasing: the same
  :class:`~fxquant.fake_quant.FakeQuantize` is called at each place, so it observes every
  value it quantizes and applies one grid to all of them.
"""

from __future__ import annotations

import dataclasses

import torch.fx as fx

from ..backends import BackendProfile, op_type_key
from ..fake_quant import FakeQuantize
from ..observers import FixedScaleObserver
from ..qconfig import OpKind, QConfig
from .meta import is_float_tensor

__all__ = ["fix_output", "share_grids"]


def fix_output(q: QConfig | None, op_type: str, profile: BackendProfile) -> QConfig | None:
    """``q`` with a fixed-scale output quantizer when ``profile`` fixes ``op_type``'s output
    grid at ``q``'s output width (else ``q`` itself)."""
    if not profile.fixed_outputs or q is None or q.output is None:
        return q
    probe = q.output()
    fixed = profile.fixed_output(op_type, probe.dtype.bits)
    if fixed is None:
        return q
    return dataclasses.replace(q, output=FakeQuantize.with_args(
        observer=FixedScaleObserver.with_args(
            scale=fixed.scale, dtype=probe.dtype, zero_point=fixed.zero_point),
        dtype=probe.dtype,
        symmetric=fixed.zero_point == 0,
        scale_math=probe.scale_math,
    ))


def _quantizer(gm: fx.GraphModule, n: object) -> FakeQuantize | None:
    if not isinstance(n, fx.Node) or n.op != "call_module":
        return None
    m = gm.get_submodule(str(n.target))
    return m if isinstance(m, FakeQuantize) else None


def _root_quantizer(gm: fx.GraphModule, v: object, kinds: dict[fx.Node, OpKind]
                    ) -> fx.Node | None:
    """The quantizer node whose grid ``v`` lies on (through ops that only move values)."""
    while isinstance(v, fx.Node):
        if _quantizer(gm, v) is not None:
            return v
        if kinds.get(v) is not OpKind.SHARE or not v.args:
            return None
        v = v.args[0]
    return None


def _output_quantizer(gm: fx.GraphModule, n: fx.Node) -> fx.Node | None:
    users = list(n.users)
    if len(users) == 1 and _quantizer(gm, users[0]) is not None:
        return users[0]
    return None


def share_grids(gm: fx.GraphModule, kinds: dict[fx.Node, OpKind], op_types: dict[fx.Node, str],
                profile: BackendProfile) -> dict[str, str]:
    """Alias quantizers per the profile's grid-sharing op types (see the module docstring).

    Returns ``{quantizer path that is no longer called: the path now used instead}``.
    """
    same, shared = profile.same_grid_ops, profile.shared_grid_ops
    if not same and not shared:
        return {}
    moved: dict[str, str] = {}
    for n in list(gm.graph.nodes):
        key = op_type_key(op_types.get(n, ""))
        if key not in same and key not in shared:
            continue
        out_q = _output_quantizer(gm, n)
        if out_q is None:
            continue
        out_fq = _quantizer(gm, out_q)
        if key in same:
            src = _root_quantizer(gm, n.args[0] if n.args else None, kinds)
            src_fq = _quantizer(gm, src)
            if src is None or src_fq is None or src_fq.dtype != out_fq.dtype:
                continue
            moved[str(out_q.target)] = str(src.target)
            out_q.target = src.target
            continue
        parts = n.args[0] if n.args and isinstance(n.args[0], (list, tuple)) else []
        for part in parts:
            if not (isinstance(part, fx.Node) and is_float_tensor(part)):
                continue
            src = _root_quantizer(gm, part, kinds)
            src_fq = _quantizer(gm, src)
            if src is None or src_fq is None or src_fq.dtype != out_fq.dtype or \
                    src.target == out_q.target or isinstance(src_fq.observer, FixedScaleObserver):
                continue  # a fixed grid (softmax / logistic ...) stays; the exporter requantizes
            moved[str(src.target)] = str(out_q.target)
            _retarget(gm, str(src.target), str(out_q.target))
    if moved:
        gm.recompile()
    return moved


def _retarget(gm: fx.GraphModule, old: str, new: str) -> None:
    for m in gm.graph.nodes:
        if m.op == "call_module" and m.target == old:
            m.target = new
