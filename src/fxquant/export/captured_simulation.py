"""The runtime simulation of the captured program: what an exported file computes, op by op.

A prepared model's fx graph shows every op only when ``torch.fx`` traced the whole model.
Inside an eager capture, a float island or a library module the graph calls as a whole
(``nn.MultiheadAttention``, ``nn.TransformerEncoder`` ...) the quantized ops are hidden, and the
eval-mode runtime simulation (:mod:`fxquant.graph.simulate`) computes them with float ops --
while ONNX Runtime fuses them into integer kernels (``QGemm``, ``QLinearMatMul``,
``MatMulIntegerToFloat`` ...) whose rounding differs at the last bit.

The exporters write what :func:`fxquant.export.program.capture` records: ATen ops plus one
``fxquant::quantize_dequantize`` call per quantizer, named by its module path.
:func:`captured_graph` turns that program into a torch-level ``GraphModule``
(:func:`fxquant.graph.exported.from_exported_program`) whose quantizer calls are the model's own
quantizer modules at their own paths, and :func:`captured_runtime_simulation` builds the runtime
simulation on it -- the same kernel matching and arithmetic as for an fx-captured model, on the
graph the file was written from.  :func:`fxquant.verify` uses it for every model whose graph
hides quantizers (:func:`fxquant.graph.simulate.hidden_quantizers`).

>>> import torch, fxquant
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(8, 8), nn.TransformerEncoderLayer(8, 2, 16))
>>> qmodel = fxquant.prepare(model, torch.randn(2, 3, 8), backend="onnxruntime")
>>> _ = fxquant.calibrate(qmodel, [torch.randn(2, 3, 8)], progress=False)
>>> module, plan = captured_runtime_simulation(qmodel.eval(), torch.randn(2, 3, 8),
...                                            "onnxruntime")
>>> sorted(set(plan.kernels.values()))[:2]
['MatMulIntegerToFloat', 'QGemm']
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..graph.capture import propagate_values
from ..graph.exported import from_exported_program
from ..graph.report import REPORT_KEY, get_report
from ..graph.simulate import RuntimePlan, graph_runtime_simulation
from ..modelio import as_inputs
from .program import capture

__all__ = ["captured_graph", "captured_runtime_simulation"]

_QDQ = torch.ops.fxquant.quantize_dequantize.default
_ASSERT_META = torch.ops.aten._assert_tensor_metadata.default


def _place(root: nn.Module, path: str, module: nn.Module) -> None:
    """Set ``module`` at ``path`` under ``root``, creating plain containers on the way (the
    program keeps empty containers where the quantizers were: they are replaced)."""
    owner, _, leaf = path.rpartition(".")
    parent = root
    for part in owner.split(".") if owner else ():
        child = parent._modules.get(part)
        if child is None:
            child = nn.Module()
            parent._modules[part] = child
        parent = child
    parent._modules[leaf] = module


def captured_graph(qmodel: nn.Module, example_inputs: Any) -> fx.GraphModule:
    """The program the exporters write for ``qmodel`` on ``example_inputs``, as a torch-level
    ``GraphModule`` whose quantizer calls are ``qmodel``'s quantizer modules (shared, not
    copied), with the prepare report in its ``meta`` and value information on every node.

    ``qmodel`` is captured in eval mode with the float simulation (its modes are restored)."""
    cp = capture(qmodel, example_inputs)
    gm = from_exported_program(cp.program)
    graph = gm.graph
    for n in list(graph.nodes):
        if n.op != "call_function" or n.target is not _QDQ:
            continue
        path = str(n.args[6])
        _place(gm, path, qmodel.get_submodule(path))
        with graph.inserting_before(n):
            call = graph.call_module(path, (n.args[0],))
        call.meta = dict(n.meta)
        n.replace_all_uses_with(call)
        graph.erase_node(n)
    for n in reversed(list(graph.nodes)):  # the quantizers' constants and their checks
        if n.users or n.op not in ("get_attr", "call_function"):
            continue
        if n.op == "get_attr" or n.target is _ASSERT_META or not n.is_impure():
            graph.erase_node(n)  # (an in-place op -- a mask filled by slices -- stays)
    graph.lint()
    gm.recompile()
    gm.meta[REPORT_KEY] = get_report(qmodel)
    inputs = as_inputs(cp.inputs)
    propagate_values(gm, (*inputs.args, *_flat_kwargs(inputs.kwargs)))
    return gm


def _flat_kwargs(kwargs: dict[str, Any]) -> list[Any]:
    """Keyword inputs in the order the program takes them (after the positional ones)."""
    return list(kwargs.values())


def captured_runtime_simulation(
    qmodel: nn.Module, example_inputs: Any, runtime: str,
    fused: Collection[str] | None = None,
) -> tuple[nn.Module | None, RuntimePlan]:
    """``(module, plan)`` as :func:`fxquant.graph.simulate.runtime_simulation` returns them, built
    on :func:`captured_graph`: the module computes ``qmodel`` with ``runtime``'s arithmetic at
    every op the runtime fuses, including the ops inside eager captures, float islands and
    library modules.  It takes the inputs the program was captured with (flattened: positional,
    then keyword values) and returns the flattened outputs; ``None`` when no op fuses.
    ``fused``: only the integer kernels producing these tensors (as ``runtime_simulation``)."""
    gm = captured_graph(qmodel, example_inputs)
    return graph_runtime_simulation(gm, runtime, fused)
