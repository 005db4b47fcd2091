"""Does an ONNX file belong to a prepared model?  Checked before anything runs.

:func:`check_exported_from` compares what the file says about itself with what the model would
export (the naming contract of :mod:`fxquant.export.naming`): the weights the file dequantizes
(``<op>.weight`` outputs of DequantizeLinear nodes) must be weights the model quantizes; when
the file quantizes activations (``<tensor>_dequantized``), some must be the model's; and every
weight the file holds for one of the model's weight quantizers (``<op>.weight_quantized`` or,
in a float export, ``<op>.weight``) must have as many values as the model's weight.  A file of
another model fails one of them, so :func:`fxquant.verify` says "this file was not exported
from this model" instead of reporting a shape mismatch deep inside.
Files of the same architecture with other weights pass: finding those is what verify is for.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

from ..errors import VerifyError, bounded, bounded_list
from ..graph.report import PrepareReport
from .naming import dq_output, q_output, quantized_tensor_name, weight_name

__all__ = ["check_exported_from"]


def _model_tensors(qmodel: nn.Module, report: PrepareReport
                   ) -> tuple[set[str], set[str], dict[str, torch.Tensor]]:
    """The model's quantized activation tensor names, quantized weight names, and the weights
    it holds by name."""
    acts: set[str] = set()
    weight_names: set[str] = set()
    weights: dict[str, torch.Tensor] = {}
    for op, rec in report.ops.items():
        for role, path in rec.quantizers.items():
            if role != "weight":
                acts.add(quantized_tensor_name(op, role))
                continue
            weight_names.add(weight_name(op))
            owner = path.rpartition(".")[0]
            try:
                w = getattr(qmodel.get_submodule(owner), "weight", None) if owner else None
            except AttributeError:
                w = None
            if isinstance(w, torch.Tensor):
                weights[weight_name(op)] = w
    return acts, weight_names, weights


def check_exported_from(
    qmodel: nn.Module, report: PrepareReport, model_proto: Any, path: str | os.PathLike[str]
) -> None:
    """Raise :class:`VerifyError` when the ONNX model ``model_proto`` (read from ``path``) was
    not exported from ``qmodel`` (see the module docstring)."""
    graph = model_proto.graph
    acts, weight_names, weights = _model_tensors(qmodel, report)
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    file_acts = {o for o in dq_outputs if o.endswith(dq_output(""))}
    problems = []
    strangers = sorted(o for o in dq_outputs if o.endswith(weight_name("")) and
                       o not in weight_names)
    if strangers:
        problems.append(f"it quantizes weights this model does not have: "
                        f"{bounded_list(strangers)}")
    if file_acts and acts and not file_acts & {dq_output(t) for t in acts}:
        problems.append(f"it quantizes none of the model's tensors (it has "
                        f"{bounded_list(sorted(file_acts))})")
    sizes = {t.name: math.prod(t.dims) for t in graph.initializer}
    for name, w in sorted(weights.items()):
        for stored in (q_output(name), name):
            if stored in sizes and sizes[stored] != w.numel():
                problems.append(f"its weight {bounded(stored)!r} has {sizes[stored]} values, the "
                                f"model's {list(w.shape)} has {w.numel()}")
                break
    if problems:
        raise VerifyError(
            f"{bounded(os.fspath(path), 120)!r} was not exported from this "
            f"{type(qmodel).__name__}: {problems[0]}; export it again with "
            "fxquant.export_onnx(qmodel, example_inputs, path), or pass the model it came from"
        )
