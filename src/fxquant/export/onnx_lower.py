"""A captured program -> an ONNX model, through ``torch.onnx.export(dynamo=True)``.

The ATen ops of :class:`~fxquant.export.program.CapturedProgram` are translated by torch.onnx's
own library (onnxscript's torchlib); each ``fxquant::quantize_dequantize`` call becomes one node
``fxquant.QuantizeDequantize(x, scale, zero_point)`` of a private domain carrying the
quantizer's module path (attribute ``name``) and its grid (``quant_min``, ``quant_max``,
``axis``, ``reciprocal``).  The post-passes (:mod:`fxquant.export.onnx_passes`) find every
quantizer by that node and write it the way the target runtime needs; no such node is left in
a file fxquant writes.

torch.onnx's console output (progress lines, warnings about packages it does not find) is
captured; it is part of the error when the translation fails.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Callable, Iterator

import torch

from ..errors import ExportError, bounded, bounded_list
from .program import CapturedProgram
from .program import user_frame as _user_frame

__all__ = ["QDQ_DOMAIN", "QDQ_OP_TYPE", "MIN_TORCH_ONNX_OPSET", "lower"]

QDQ_DOMAIN = "fxquant"
"""Domain of the quantizer nodes the lowering writes (removed by the post-passes)."""
QDQ_OP_TYPE = "QuantizeDequantize"
MIN_TORCH_ONNX_OPSET = 18
"""The lowest opset ``torch.onnx.export(dynamo=True)`` writes (it raises a lower request)."""

_op = None


def _qdq_op():
    """The onnxscript op for ``fxquant.QuantizeDequantize`` (built once, on first use)."""
    global _op
    if _op is None:
        import onnxscript
        from onnx.defs import OpSchema

        param = OpSchema.FormalParameter
        attr = OpSchema.Attribute
        floats = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"]
        schema = OpSchema(
            QDQ_OP_TYPE, QDQ_DOMAIN, 1,
            inputs=[param("x", "T"), param("scale", "T"), param("zero_point", "Z")],
            outputs=[param("y", "T")],
            type_constraints=[("T", floats, ""), ("Z", ["tensor(int32)"], "")],
            attributes=[
                attr("name", OpSchema.AttrType.STRING, "quantizer module path"),
                attr("quant_min", OpSchema.AttrType.INT, ""),
                attr("quant_max", OpSchema.AttrType.INT, ""),
                attr("axis", OpSchema.AttrType.INT, "channel axis, -1 per tensor"),
                attr("reciprocal", OpSchema.AttrType.INT, "1: ScaleMath.RECIPROCAL"),
            ],
        )
        _op = onnxscript.values.Op(onnxscript.values.Opset(QDQ_DOMAIN, 1), QDQ_OP_TYPE, schema)
    return _op


def _translate_qdq(x, scale, zero_point, quant_min: int, quant_max: int, axis: int, name: str,
                   reciprocal: bool = False):
    return _qdq_op()(x, scale, zero_point, quant_min=quant_min, quant_max=quant_max, axis=axis,
                     name=name, reciprocal=int(reciprocal))


@contextlib.contextmanager
def _quiet(out: io.StringIO) -> Iterator[None]:
    """torch.onnx's prints, warnings and log records go to ``out`` instead of the console."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    handler = logging.StreamHandler(out)
    logger.setLevel(logging.ERROR)
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(out):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def lower(cp: CapturedProgram, opset: int,
          model_ops: Callable[[str], list[str]] | None = None):
    """Translate ``cp`` to an ``onnx_ir.Model`` at ``opset`` (quantizers as private nodes).

    ``model_ops``: the model's op names for an ATen op's base name (``"cummax"``), to name them
    in errors.

    Raises:
        ExportError: an ATen op torch.onnx cannot translate, named with the model's op names
            or the source line of the model code that produced it.
    """
    out = io.StringIO()
    table = {torch.ops.fxquant.quantize_dequantize.default: _translate_qdq}
    try:
        with _quiet(out):
            program = torch.onnx.export(
                cp.program, cp.inputs.args, kwargs=cp.inputs.kwargs or None, dynamo=True,
                opset_version=opset, custom_translation_table=table, verbose=False,
                report=False, optimize=True,
            )
    except Exception as err:  # torch.onnx wraps every failure; keep its explanation
        raise ExportError(_explain(err, cp, model_ops)) from err
    return program.model


_NODE = re.compile(r"Error when translating node %(\S+) : .*?target=([^\]]+)\]")


def _explain(err: BaseException, cp: CapturedProgram,
             model_ops: Callable[[str], list[str]] | None) -> str:
    """The failing ATen op, the model line that produced it, and torch.onnx's reason."""
    causes = [err]
    while causes[-1].__cause__ is not None and len(causes) < 20:
        causes.append(causes[-1].__cause__)
    root = causes[-1]
    text = str(root).strip().splitlines()[0] if str(root).strip() else ""
    why = f"{type(root).__name__}: {bounded(text, 160)}"
    match = next((m for c in causes if (m := _NODE.search(str(c)))), None)
    if match is None:
        return f"torch.onnx could not translate the captured program ({why})"
    node_name, target = match.group(1), match.group(2)
    node = next((n for n in cp.program.graph.nodes if n.name == node_name), None)
    where = _user_frame(node.meta.get("stack_trace") or "") if node is not None else ""
    target = target.removeprefix("torch.ops.")
    names = model_ops(target.split(".")[1] if "." in target else target) if model_ops else []
    if names:
        where = f"model op {bounded_list(names, 3)}" + (f", {where}" if where else "")
    return (
        f"op {bounded(target, 60)}{f' ({where})' if where else ''} has no ONNX translation, "
        "quantized or in float (so no automatic float fallback is possible either); rewrite it "
        f"with ops ONNX has, or keep it out of the exported module (torch.onnx: {why})"
    )
