"""Stable op names.

* module calls: the module path; extra call sites of a reused module get ``_1``, ``_2`` ...
  (``relu``, ``relu_1``);
* functional / method ops: ``<owner>._generated_<op>_<n>`` where ``owner`` is the module whose
  ``forward`` made the call (omitted at top level: ``_generated_add_0``) and ``n`` counts that op
  in that owner in graph order;
* FloatFunctional calls take the FloatFunctional's module path;
* model inputs: the argument name.
"""

from __future__ import annotations

from collections import defaultdict

import torch.fx as fx

from .meta import name_override, set_op_name
from .patterns import function_name

__all__ = ["assign_names", "owner_of", "quantized_tensor_name", "weight_name"]


def owner_of(node: fx.Node) -> str:
    """Path of the innermost module whose forward created ``node`` ('' for the root)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    return list(stack.values())[-1][0]


def assign_names(gm: fx.GraphModule) -> dict[fx.Node, str]:
    """Give every placeholder / call node its stable name (also stored in ``node.meta``)."""
    names: dict[fx.Node, str] = {}
    module_calls: dict[str, int] = defaultdict(int)
    op_counts: dict[tuple[str, str], int] = defaultdict(int)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            name = str(node.target).lstrip("*")
        elif node.op == "call_module":
            k = module_calls[node.target]
            module_calls[node.target] += 1
            name = node.target if k == 0 else f"{node.target}_{k}"
        elif node.op in ("call_function", "call_method"):
            override = name_override(node)
            if override is not None:
                name = override
            else:
                owner = owner_of(node)
                base = function_name(node.target)
                n = op_counts[(owner, base)]
                op_counts[(owner, base)] += 1
                name = f"_generated_{base}_{n}"
                name = f"{owner}.{name}" if owner else name
        else:
            continue
        names[node] = name
        set_op_name(node, name)
    return names


def quantized_tensor_name(op_name: str, role: str) -> str:
    """Name of the float tensor that quantizer ``role`` of op ``op_name`` quantizes (the ONNX
    naming contract: :mod:`fxquant.export.naming`)."""
    if role == "output":
        return op_name
    if role == "weight":
        return weight_name(op_name)
    if not role or role.startswith(".") or role.endswith("."):
        raise ValueError(f"unknown quantizer role {role!r} of op {op_name!r}")
    return f"{op_name}.{role}"  # input_<i>; a library module's internal values


def weight_name(op_name: str) -> str:
    return f"{op_name}.weight"
