"""Exported programs (``torch.export``) as graphs that :func:`fxquant.prepare` understands.

``torch.export`` records ATen operators (``aten.conv2d.default``, ``aten.linear.default`` ...),
while fxquant's patterns know the torch-level callables (``F.conv2d``, ``F.linear``, ``+`` ...).
:func:`from_exported_program` rewrites every ATen call whose torch-level twin computes the same
thing with the same arguments (a table: :data:`ATEN_TO_TORCH`, plus a few argument
reorderings such as ``batch_norm`` / ``embedding`` and ``slice`` / ``select`` as indexing), so a
``.pt2`` file quantizes like the module it came from.  ATen calls outside the table stay as they
are (``fxquant.summary`` lists them as float ops).

The program keeps the shapes it was exported with: export with ``dynamic_shapes`` for a free
batch dimension.  Its shape guards are dropped (fxquant runs the graph as recorded).

>>> import torch
>>> from torch import nn
>>> program = torch.export.export(nn.Sequential(nn.Linear(4, 2), nn.ReLU()), (torch.randn(1, 4),))
>>> gm = from_exported_program(program)
>>> [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"]
['linear', 'relu']
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

__all__ = ["ATEN_TO_TORCH", "from_exported_program", "torch_level"]

_aten = torch.ops.aten

ATEN_TO_TORCH: dict[Any, Callable[..., Any]] = {
    _aten.conv1d.default: F.conv1d,
    _aten.conv2d.default: F.conv2d,
    _aten.conv3d.default: F.conv3d,
    _aten.conv_transpose1d.default: F.conv_transpose1d,
    _aten.conv_transpose2d.input: F.conv_transpose2d,
    _aten.conv_transpose3d.input: F.conv_transpose3d,
    _aten.linear.default: F.linear,
    _aten.relu.default: F.relu,
    _aten.relu6.default: F.relu6,
    _aten.sigmoid.default: torch.sigmoid,
    _aten.tanh.default: torch.tanh,
    _aten.hardswish.default: F.hardswish,
    _aten.hardsigmoid.default: F.hardsigmoid,
    _aten.hardtanh.default: F.hardtanh,
    _aten.silu.default: F.silu,
    _aten.gelu.default: F.gelu,
    _aten.leaky_relu.default: F.leaky_relu,
    _aten.add.Tensor: torch.add,
    _aten.sub.Tensor: torch.sub,
    _aten.mul.Tensor: torch.mul,
    _aten.div.Tensor: torch.div,
    _aten.matmul.default: torch.matmul,
    _aten.bmm.default: torch.bmm,
    _aten.softmax.int: torch.softmax,
    _aten.log_softmax.int: torch.log_softmax,
    _aten.mean.dim: torch.mean,
    _aten.sum.dim_IntList: torch.sum,
    _aten.cat.default: torch.cat,
    _aten.stack.default: torch.stack,
    _aten.flatten.using_ints: torch.flatten,
    _aten.reshape.default: torch.reshape,
    _aten.permute.default: torch.permute,
    _aten.transpose.int: torch.transpose,
    _aten.t.default: torch.t,
    _aten.unsqueeze.default: torch.unsqueeze,
    _aten.squeeze.dim: torch.squeeze,
    _aten.chunk.default: torch.chunk,
    _aten.split.Tensor: torch.split,
    _aten.unbind.int: torch.unbind,
    _aten.pad.default: F.pad,
    _aten.roll.default: torch.roll,
    _aten.max_pool1d.default: F.max_pool1d,
    _aten.max_pool2d.default: F.max_pool2d,
    _aten.avg_pool1d.default: F.avg_pool1d,
    _aten.avg_pool2d.default: F.avg_pool2d,
    _aten.adaptive_avg_pool1d.default: F.adaptive_avg_pool1d,
    _aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d,
    _aten.scaled_dot_product_attention.default: F.scaled_dot_product_attention,
    _aten.dropout.default: F.dropout,
    _aten.clone.default: torch.clone,
    _aten.pixel_shuffle.default: F.pixel_shuffle,
}
"""ATen overload -> torch callable taking the same positional and keyword arguments."""


def _first(n: int, fn: Callable[..., Any]):
    """``fn`` on the first ``n`` positional arguments (the rest are backend flags)."""
    def rewrite(args: tuple, kwargs: dict) -> tuple[str, Any, tuple, dict]:
        return "call_function", fn, args[:n], {}
    return rewrite


def _batch_norm(args: tuple, kwargs: dict) -> tuple[str, Any, tuple, dict]:
    # aten: (input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)
    x, w, b, mean, var, training, momentum, eps = args[:8]
    return "call_function", F.batch_norm, (x, mean, var, w, b, training, momentum, eps), {}


def _embedding_module(gm: fx.GraphModule, weight: Any) -> str | None:
    """The path of a plain container holding only ``weight`` (an exported program keeps the
    parameter at its original path): it becomes an ``nn.Embedding`` sharing that parameter,
    since fxquant quantizes embeddings as modules.  ``None`` when that is not possible."""
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
        return None
    owner, _, leaf = str(weight.target).rpartition(".")
    if leaf != "weight" or not owner:
        return None
    try:
        container = gm.get_submodule(owner)
    except AttributeError:
        return None
    if isinstance(container, nn.Embedding):
        return owner
    params = dict(container.named_parameters())
    if (type(container) is not nn.Module or set(params) != {"weight"}
            or list(container.buffers()) or list(container.children())
            or params["weight"].dim() != 2):
        return None
    emb = nn.Embedding(*params["weight"].shape, _weight=params["weight"])
    gm.add_submodule(owner, emb)
    return owner


def _embedding(gm: fx.GraphModule):
    def rewrite(args: tuple, kwargs: dict) -> tuple[str, Any, tuple, dict]:
        # aten: (weight, indices, padding_idx, scale_grad_by_freq, sparse); padding_idx and
        # the flags only change gradients
        path = _embedding_module(gm, args[0])
        if path is not None:
            return "call_module", path, (args[1],), {}
        return "call_function", F.embedding, (args[1], args[0]), {}
    return rewrite


def _method(name: str, n: int):
    def rewrite(args: tuple, kwargs: dict) -> tuple[str, Any, tuple, dict]:
        return "call_method", name, args[:n], {}
    return rewrite


def _slice(args: tuple, kwargs: dict) -> tuple[str, Any, tuple, dict]:
    # aten.slice.Tensor(self, dim=0, start=None, end=None, step=1) -> self[..., start:end:step]
    full = (*args, *[None] * 5)[:5]
    x, dim, start, end, step = full
    dim = 0 if dim is None else dim
    if not isinstance(dim, int) or dim < 0:
        return "keep", None, args, kwargs
    index = (*[slice(None)] * dim, slice(start, end, 1 if step is None else step))
    return "call_function", operator.getitem, (x, index), {}


def _select(args: tuple, kwargs: dict) -> tuple[str, Any, tuple, dict]:
    x, dim, i = args
    if not isinstance(dim, int) or dim < 0:
        return "keep", None, args, kwargs
    return "call_function", operator.getitem, (x, (*[slice(None)] * dim, i)), {}


def _passthrough(args: tuple, kwargs: dict) -> tuple[str, Any, tuple, dict]:
    """A view of the whole tensor (``aten.alias``): its users read the input itself."""
    return "passthrough", None, args[:1], {}


def _same_dtype(args: tuple, kwargs: dict) -> tuple[str, Any, tuple, dict]:
    """``x.to(dtype)`` to the dtype ``x`` already has (``aten.to.dtype``, e.g. a T5 LayerNorm's
    ``hidden.to(torch.float32)``): the identity."""
    x = args[0] if args else None
    dtype = args[1] if len(args) > 1 else kwargs.get("dtype")
    val = x.meta.get("val") if isinstance(x, fx.Node) else None
    if isinstance(val, torch.Tensor) and val.dtype == dtype and not kwargs.get("copy", False):
        return "passthrough", None, (x,), {}
    return "keep", None, args, kwargs


def _constant_pad(args: tuple, kwargs: dict) -> tuple[str, Any, tuple, dict]:
    # aten.constant_pad_nd(self, pad, value=0) -> F.pad(x, pad, "constant", value)
    x, pad, value = (*args, 0)[:3]
    return "call_function", F.pad, (x, pad, "constant", kwargs.get("value", value)), {}


_REWRITES: dict[Any, Callable[[tuple, dict], tuple[str, Any, tuple, dict]]] = {
    _aten.constant_pad_nd.default: _constant_pad,
    _aten.to.dtype: _same_dtype,
    _aten.alias.default: _passthrough,
    _aten.layer_norm.default: _first(5, F.layer_norm),
    _aten.group_norm.default: _first(5, F.group_norm),
    _aten.batch_norm.default: _batch_norm,
    _aten.view.default: _method("view", 2),
    _aten.expand.default: _method("expand", 2),
    _aten.slice.Tensor: _slice,
    _aten.select.int: _select,
}


def torch_level(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite the ATen calls of ``gm`` in place (module docstring); returns ``gm``."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target) == "_guards_fn" and not node.users:
            graph.erase_node(node)
            continue
        if node.op != "call_function":
            continue
        if node.target in ATEN_TO_TORCH:
            node.target = ATEN_TO_TORCH[node.target]
            continue
        rewrite = _REWRITES.get(node.target)
        if node.target == _aten.embedding.default:
            rewrite = _embedding(gm)
        if rewrite is None:
            continue
        op, target, args, kwargs = rewrite(tuple(node.args), dict(node.kwargs))
        if op == "keep":
            continue
        if op == "passthrough":
            node.replace_all_uses_with(args[0])
            graph.erase_node(node)
            continue
        with graph.inserting_before(node):
            new = graph.create_node(op, target, args, kwargs)
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    for node in list(graph.nodes):  # weights now read by their embedding modules
        if node.op == "get_attr" and not node.users:
            graph.erase_node(node)
    if hasattr(gm, "_guards_fn") and not any(
        n.op == "call_module" and str(n.target) == "_guards_fn" for n in graph.nodes
    ):
        delattr(gm, "_guards_fn")
    graph.lint()
    gm.recompile()
    return gm


def from_exported_program(program: torch.export.ExportedProgram) -> fx.GraphModule:
    """``program.module()`` with its ATen calls rewritten to torch-level ones (module
    docstring), as a plain ``GraphModule`` (``program.module()`` refuses ``eval()`` /
    ``train()``), ready for :func:`fxquant.prepare`."""
    gm = torch_level(program.module())
    plain = fx.GraphModule(gm, gm.graph, class_name="ExportedProgramModule")
    for attr in ("_in_spec", "_out_spec"):  # read by the pytree code of forward
        if hasattr(gm, attr):
            setattr(plain, attr, getattr(gm, attr))
    plain.recompile()
    return plain
