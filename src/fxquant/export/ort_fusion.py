"""What ONNX Runtime really fused: its optimized graph read back, and checked against the profile.

The runtime simulation (:mod:`fxquant.graph.simulation`) computes the ops that the backend
profile's table (:data:`fxquant.backends.ORT_KERNELS`) says ORT fuses.  :func:`fused_kernels`
reads which ops ORT did fuse from the optimized model it writes
(``SessionOptions.optimized_model_filepath``), and :func:`kernel_mismatches` lists where the two
disagree; :func:`fxquant.verify` warns about those (a disagreement means the simulation computes a
different kernel than the runtime at that tensor).
"""

from __future__ import annotations

from typing import Any

from ..backends import ORT_EXACT_IN_FLOAT

__all__ = ["ORT_INTEGER_OPS", "fused_kernels", "kernel_mismatches"]

ORT_INTEGER_OPS = frozenset({
    "QLinearConv", "NhwcQLinearConv", "QLinearConvTranspose", "QGemm", "QLinearMatMul",
    "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
    "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool",
    "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearConcat", "QLinearWhere",
    "QLinearReduceMean", "QAttention", "QEmbedLayerNormalization", "QOrderedMatMul",
})
"""ORT op types that run in integer arithmetic."""

_FUSABLE_CLIPS = frozenset({"Relu", "Clip"})
_SUFFIX = "_quantized"


def fused_kernels(nodes: Any, original: Any) -> dict[str, str]:
    """Quantized tensor name -> ORT kernel, for the fused integer kernels of an optimized graph.

    A fused kernel's output keeps either the QuantizeLinear's output name (``<tensor>_quantized``)
    or the name of the op node it replaced (``<op>/<OpType>``); from that node the original graph
    leads, through Relu / Clip nodes ORT dropped, to the QuantizeLinear of the tensor.  (Scale
    names cannot be used: ORT merges identical initializers.)  A Linear's ``MatMul`` fused into
    ``MatMulIntegerToFloat`` (float output) is keyed by the Linear's name.

    Args:
        nodes: the optimized graph's nodes (``onnx.load(optimized_path).graph.node``).
        original: the exported ``onnx.ModelProto``.
    """
    by_name = {n.name: n for n in original.graph.node}
    consumers: dict[str, list] = {}
    for n in original.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    fused: dict[str, str] = {}
    for n in nodes:
        if n.op_type not in ORT_INTEGER_OPS or not n.output:
            continue
        out = n.output[0]
        if n.op_type == "MatMulIntegerToFloat" and out.endswith("_matmul"):
            fused[out[: -len("_matmul")]] = n.op_type  # a Linear's MatMul (float output)
            continue
        if out.endswith(_SUFFIX):
            fused[out[: -len(_SUFFIX)]] = n.op_type
            continue
        node = by_name.get(out)
        while node is not None and node.output:
            users = consumers.get(node.output[0], [])
            if len(users) != 1:
                break
            node = users[0]
            if node.op_type == "QuantizeLinear":
                if node.output[0].endswith(_SUFFIX):
                    fused[node.output[0][: -len(_SUFFIX)]] = n.op_type
                break
            if node.op_type not in _FUSABLE_CLIPS:
                break
    return fused


def kernel_mismatches(simulated: dict[str, str], fused: dict[str, str]) -> dict[str, str]:
    """Tensor -> how the simulation's kernels (``RuntimePlan.kernels``) and ORT's differ there.

    Kernels whose arithmetic the float simulation already reproduces exactly
    (:data:`fxquant.backends.ORT_EXACT_IN_FLOAT`: ``QLinearConcat``, ``QLinearLeakyRelu``) are not
    differences.
    """
    out: dict[str, str] = {}
    simulated = {t: k for t, k in simulated.items() if k in ORT_INTEGER_OPS}  # integer kernels
    for tensor in sorted(set(simulated) | set(fused)):
        sim, rt = simulated.get(tensor), fused.get(tensor)
        if sim == rt or (sim is None and rt in ORT_EXACT_IN_FLOAT):
            continue
        if sim is None:
            out[tensor] = f"ONNX Runtime runs {rt}; the simulation runs float ops"
        elif rt is None:
            out[tensor] = f"the simulation computes {sim}; ONNX Runtime did not fuse it"
        else:
            out[tensor] = f"ONNX Runtime runs {rt}; the simulation computes {sim}"
    return out
