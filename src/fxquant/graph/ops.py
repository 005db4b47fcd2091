"""The op-trait table: what every op fxquant knows *is*, in one place.

Each known module type, function and tensor method has one :class:`OpTraits` record; every
consumer asks it instead of keeping its own list of op types:

* **prepare** (:mod:`.patterns`, :mod:`.plan`): ``kind`` (weighted / compute / activation /
  shares its input's grid), the weight argument and axis of functional weighted ops;
* **CLE** (:mod:`fxquant.algorithms.cle`): ``homogeneous`` (``f(x / s) == f(x) / s`` per channel
  for ``s > 0``: equalization may cross it), ``shift_commutes`` (``f(x - c) == f(x) - c``:
  high-bias absorption may cross it), ``elementwise`` and the clip bounds;
* **AdaRound / block reconstruction**: ``macs`` says whether and how a weight multiplies its
  input (conv / transposed conv / linear rows); the clip bounds of the activation after a layer;
* **convert** (:mod:`fxquant.convert`): ``native`` (the torch quantized engines that run the op
  on ``quint8`` tensors as it is), ``identity_at_inference``, ``sequence_output``, the clip
  bounds (fused relu / quantized clamp) and the canonical ``name`` of binary ops;
* **sensitivity / mixed precision**: :func:`count_macs`, the one multiply-accumulate counter.

Lookups are by exact module type (a subclass may override ``forward``), by function object and by
method name.  :func:`module_traits` / :func:`function_traits` / :func:`method_traits` return
:data:`UNKNOWN` for anything not listed (kept in float and reported by :func:`fxquant.summary`);
the kind of a few ops depends on their arguments (``F.interpolate``'s mode, ``F.pad``'s value)
and is decided by :func:`fxquant.graph.patterns.classify_function`.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .. import nn as qnn
from ..nn.stubs import DeQuantStub, QuantStub
from ..qconfig.opinfo import OpKind

__all__ = [
    "TORCH_ENGINES",
    "MacRule",
    "OpTraits",
    "UNKNOWN",
    "RELU",
    "RELU6",
    "MODULE_TRAITS",
    "FUNCTION_TRAITS",
    "METHOD_TRAITS",
    "NAMED_FUNCTION_TRAITS",
    "module_traits",
    "layer_traits",
    "function_traits",
    "method_traits",
    "node_traits",
    "canonical_name",
    "hashable",
    "is_stub",
    "clip_bounds",
    "count_macs",
    "reads_metadata_only",
    "reads_shape_only",
    "read_inputs",
]

TORCH_ENGINES: frozenset[str] = frozenset({"x86", "fbgemm", "qnnpack"})
"""torch's quantized engines (``torch.backends.quantized.engine``) fxquant converts for."""

RELU = (0.0, None)
RELU6 = (0.0, 6.0)

W, C, A, S = OpKind.WEIGHTED, OpKind.COMPUTE, OpKind.ACTIVATION, OpKind.SHARE


class MacRule(enum.Enum):
    """How a weighted op's multiply-accumulates are counted (:func:`count_macs`).

    CONV: ``output elements x weight[0].numel()`` (each output element reads one filter).
    CONV_TRANSPOSE: ``input elements x weight[0].numel()`` (each input element is scattered).
    LINEAR: ``output elements x in_features`` (``weight.shape[-1]``).
    LOOKUP: 0 (an embedding reads rows; it multiplies nothing).
    """

    CONV = "conv"
    CONV_TRANSPOSE = "conv_transpose"
    LINEAR = "linear"
    LOOKUP = "lookup"


@dataclass(frozen=True)
class OpTraits:
    """What one op is (see the module docstring for who asks what).

    Attributes:
        name: canonical op name (``torch.add``, ``operator.iadd`` and ``"add_"`` are ``add``).
        kind: :class:`~fxquant.qconfig.OpKind` (``SHARE``: the op shares its input's grid).
        weight_axis: output-channel axis of the weight (per-channel quantization).
        weight_arg: positional index of the weight of a functional weighted op.
        param_args: positional arguments that are parameters (weight, bias), not activations.
        macs: how a weighted op's multiply-accumulates are counted (``None``: no weight).
        homogeneous: ``f(x / s) == f(x) / s`` per channel for ``s > 0``.
        shift_commutes: ``f(x - c) == f(x) - c`` per channel.
        elementwise: acts on each element on its own (no pooling / mixing).
        clip: clip-like with these static ``(lo, hi)`` bounds (``hi`` None: unbounded above).
        clip_from_args: clip-like with the bounds given as arguments (hardtanh).
        native: torch quantized engines that run the op on ``quint8`` tensors as it is.
        identity_at_inference: dropout / identity: nothing at inference.
        sequence_output: returns a list / tuple of tensors (chunk, split, unbind).
        kind_from_args: ``kind`` is the default; the arguments decide (``F.interpolate`` is
            SHARE in mode "nearest", ``F.pad`` with zeros / reflect / replicate), see
            :func:`fxquant.graph.patterns.classify_function`.
    """

    name: str
    kind: OpKind
    weight_axis: int | None = None
    weight_arg: int | None = None
    param_args: tuple[int, ...] = ()
    macs: MacRule | None = None
    homogeneous: bool = False
    shift_commutes: bool = False
    elementwise: bool = False
    clip: tuple[float, float | None] | None = None
    clip_from_args: bool = False
    native: frozenset[str] = frozenset()
    identity_at_inference: bool = False
    sequence_output: bool = False
    kind_from_args: bool = False

    @property
    def multiplies_weight(self) -> bool:
        """A weighted op whose weight multiplies its input (conv / linear, not an embedding)."""
        return self.macs is not None and self.macs is not MacRule.LOOKUP

    @property
    def clip_like(self) -> bool:
        return self.clip is not None or self.clip_from_args


UNKNOWN = OpTraits("unknown", OpKind.FLOAT)
"""Traits of an op the table does not list: kept in float."""


_ALIASES = {
    "iadd": "add",
    "isub": "sub",
    "imul": "mul",
    "truediv": "div",
    "concat": "cat",
    "relu_": "relu",
    "add_": "add",
    "sub_": "sub",
    "mul_": "mul",
    "div_": "div",
    "__getitem__": "getitem",
    "clip": "clamp",
}


def canonical_name(target: Any) -> str:
    """Short op name of a function / method target: ``torch.add`` and ``operator.add`` -> add."""
    name = target if isinstance(target, str) else getattr(target, "__name__", repr(target))
    return _ALIASES.get(name, name)


# -- the table --------------------------------------------------------------------------------
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _module_mac_rule(t: type) -> MacRule:
    if issubclass(t, nn.Embedding):
        return MacRule.LOOKUP
    if issubclass(t, nn.Linear):
        return MacRule.LINEAR
    if issubclass(t, _TRANSPOSED):
        return MacRule.CONV_TRANSPOSE
    return MacRule.CONV


def _weighted_modules() -> dict[type, OpTraits]:
    """Float weighted modules, their weight-quantized and ConvBn forms (axis from
    :data:`fxquant.nn.WEIGHT_AXIS`, the owner of module weight axes)."""
    out = {}
    for t in (*qnn.FLOAT_TO_QUANT, *qnn.FLOAT_TO_QUANT.values(), *qnn.CONV_TO_CONV_BN.values()):
        out[t] = OpTraits(t.__name__.lower(), W, weight_axis=qnn.WEIGHT_AXIS[t],
                          macs=_module_mac_rule(t))
    return out


_POOL_NAMES = ("1d", "2d", "3d")


def _modules() -> dict[type, OpTraits]:
    m: dict[type, OpTraits] = _weighted_modules()

    def add(types: Iterable[type], **traits: Any) -> None:
        for t in types:
            m[t] = OpTraits(t.__name__.lower(), **traits)

    max_pools = [getattr(nn, f"MaxPool{d}") for d in _POOL_NAMES]
    adaptive_max = [getattr(nn, f"AdaptiveMaxPool{d}") for d in _POOL_NAMES]
    avg_pools = [getattr(nn, f"{p}{d}") for p in ("AvgPool", "AdaptiveAvgPool")
                 for d in _POOL_NAMES]
    dropouts = [nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout]
    add([nn.ReLU], kind=A, homogeneous=True, elementwise=True, clip=RELU)
    add([nn.ReLU6], kind=A, elementwise=True, clip=RELU6)
    add([nn.Hardtanh], kind=C, elementwise=True, clip_from_args=True)
    add([nn.LeakyReLU], kind=C, homogeneous=True, elementwise=True)
    add(avg_pools, kind=C, homogeneous=True)
    add([nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
         nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.Sigmoid, nn.Tanh, nn.GELU,
         nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.PReLU, nn.ELU, nn.Softmax, nn.LogSoftmax,
         nn.Mish, nn.Softplus, nn.Upsample, nn.UpsamplingBilinear2d], kind=C)
    # SHARE in mode "nearest" (patterns.classify_module), and native then
    m[nn.Upsample] = replace(m[nn.Upsample], kind_from_args=True, native=TORCH_ENGINES)
    add(max_pools, kind=S, homogeneous=True, shift_commutes=True, native=TORCH_ENGINES)
    m[nn.MaxPool3d] = replace(m[nn.MaxPool3d], native=TORCH_ENGINES - {"qnnpack"})
    add(adaptive_max, kind=S, homogeneous=True, shift_commutes=True)  # no quantized kernel
    add(dropouts, kind=S, homogeneous=True, elementwise=True, identity_at_inference=True)
    m[nn.AlphaDropout] = replace(m[nn.AlphaDropout], homogeneous=False, elementwise=False)
    add([nn.Identity], kind=S, homogeneous=True, shift_commutes=True, elementwise=True,
        identity_at_inference=True)
    add([nn.Flatten, nn.Unflatten, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
         nn.UpsamplingNearest2d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d], kind=S,
        native=TORCH_ENGINES)
    # library modules quantized inside (fxquant.graph.library_modules): weighted ops whose
    # weights do not multiply one input (no MACs rule: CLE / AdaRound leave them alone)
    add([*qnn.LIBRARY_TO_QUANT, *qnn.LIBRARY_TO_QUANT.values()], kind=W, weight_axis=0)
    add([qnn.ScaledDotProductAttention], kind=C)
    return m


def _functions() -> dict[Any, OpTraits]:
    f: dict[Any, OpTraits] = {}

    def add(targets: Iterable[Any], **traits: Any) -> None:
        for t in targets:
            f[t] = OpTraits(canonical_name(t), **traits)

    for conv in (F.conv1d, F.conv2d, F.conv3d):
        add([conv], kind=W, weight_axis=0, weight_arg=1, param_args=(1, 2), macs=MacRule.CONV)
    add([F.linear], kind=W, weight_axis=0, weight_arg=1, param_args=(1, 2),
        macs=MacRule.LINEAR)
    # addmm(b, x, w): w is [in, out]
    add([torch.addmm], kind=W, weight_axis=1, weight_arg=2, param_args=(0, 2),
        macs=MacRule.LINEAR)
    add([F.relu, torch.relu, F.relu_, torch.relu_], kind=A, homogeneous=True,
        elementwise=True, clip=RELU)
    add([F.relu6], kind=A, elementwise=True, clip=RELU6)
    add([F.hardtanh, F.hardtanh_], kind=C, elementwise=True, clip_from_args=True)
    add([F.leaky_relu], kind=C, homogeneous=True, elementwise=True)
    add([F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
         F.adaptive_avg_pool3d], kind=C, homogeneous=True)
    add([torch.add, operator.add, operator.iadd, torch.sub, operator.sub, operator.isub,
         torch.mul, operator.mul, operator.imul, torch.div, operator.truediv, torch.matmul,
         operator.matmul, torch.bmm, torch.cat, torch.concat, torch.stack, F.softmax,
         torch.softmax, F.log_softmax, F.layer_norm, F.group_norm, F.batch_norm, F.instance_norm,
         torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.gelu, F.silu, F.mish, F.hardswish,
         F.hardsigmoid, F.elu, F.softplus, torch.mean, torch.sum, F.grid_sample, torch.exp,
         torch.sqrt, torch.rsqrt, torch.pow, torch.erf, F.normalize, torch.einsum, torch.neg,
         operator.neg, torch.abs, torch.clamp, torch.clip, F.scaled_dot_product_attention],
        kind=C)
    # SHARE in mode "nearest" (then native) / with zeros, reflect or replicate padding
    add([F.interpolate], kind=C, kind_from_args=True, native=TORCH_ENGINES)
    add([F.pad], kind=C, kind_from_args=True)
    add([F.max_pool1d, F.max_pool2d], kind=S, homogeneous=True, shift_commutes=True,
        native=TORCH_ENGINES)
    add([F.max_pool3d], kind=S, homogeneous=True, shift_commutes=True,
        native=TORCH_ENGINES - {"qnnpack"})
    add([F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d], kind=S,
        homogeneous=True, shift_commutes=True)  # no quantized kernel
    add([F.dropout, F.dropout1d, F.dropout2d, F.dropout3d], kind=S, homogeneous=True,
        elementwise=True, identity_at_inference=True)
    add([torch.chunk, torch.split, torch.unbind], kind=S, native=TORCH_ENGINES,
        sequence_output=True)
    add([torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze,
         torch.unsqueeze, operator.getitem, torch.narrow, F.pixel_shuffle, F.pixel_unshuffle,
         torch.t, torch.flip, torch.movedim, torch.swapaxes, torch.tile], kind=S,
        native=TORCH_ENGINES)
    add([torch.roll], kind=S)  # no quantized kernel
    return f


def _methods() -> dict[str, OpTraits]:
    m: dict[str, OpTraits] = {}

    def add(names: Iterable[str], **traits: Any) -> None:
        for n in names:
            m[n] = OpTraits(canonical_name(n), **traits)

    add(["relu", "relu_"], kind=A, homogeneous=True, elementwise=True, clip=RELU)
    add(["add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "matmul", "bmm", "softmax",
         "log_softmax", "mean", "sum", "sigmoid", "tanh", "exp", "pow", "sqrt", "rsqrt", "neg",
         "abs", "clamp", "clip"], kind=C)
    add(["chunk", "split", "unbind"], kind=S, native=TORCH_ENGINES, sequence_output=True)
    add(["view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze",
         "unsqueeze", "expand", "expand_as", "repeat", "narrow", "flip", "t", "view_as",
         "reshape_as", "unflatten", "clone", "detach", "movedim", "swapaxes", "tile",
         "__getitem__"], kind=S, native=TORCH_ENGINES)
    add(["roll"], kind=S)  # no quantized kernel
    add(["to", "float", "type_as"], kind=S)  # casts: float to float keeps the values
    return m


def _named_functions() -> dict[tuple[str, str], OpTraits]:
    """Functions of optional libraries, by ``(module, name)``: fxquant imports none of them."""
    return {
        ("torchvision.ops.stochastic_depth", "stochastic_depth"): OpTraits(
            "stochastic_depth", S, elementwise=True, identity_at_inference=True),
    }


MODULE_TRAITS: dict[type, OpTraits] = _modules()
"""Exact module type -> :class:`OpTraits`."""
FUNCTION_TRAITS: dict[Any, OpTraits] = _functions()
"""Function (``torch.add``, ``F.relu``, ``operator.add`` ...) -> :class:`OpTraits`."""
METHOD_TRAITS: dict[str, OpTraits] = _methods()
"""Tensor method name (``"view"``, ``"add_"`` ...) -> :class:`OpTraits`."""
NAMED_FUNCTION_TRAITS: dict[tuple[str, str], OpTraits] = _named_functions()
"""``(module, name)`` of a function of an optional library -> :class:`OpTraits`."""

_QUANT_STUB = OpTraits("quant_stub", OpKind.QUANT_STUB, identity_at_inference=True)
_DEQUANT_STUB = OpTraits("dequant_stub", OpKind.DEQUANT_STUB)
QUANT_STUB_NAMES = ("QuantStub",)
DEQUANT_STUB_NAMES = ("DeQuantStub",)


# -- lookups ----------------------------------------------------------------------------------
def is_stub(m: nn.Module) -> OpKind | None:
    """QUANT_STUB / DEQUANT_STUB for fxquant's stubs (:mod:`fxquant.nn.stubs`, subclasses
    included) and torch.ao's eager stubs (matched by name, no torch.ao import)."""
    if isinstance(m, QuantStub):
        return OpKind.QUANT_STUB
    if isinstance(m, DeQuantStub):
        return OpKind.DEQUANT_STUB
    if not type(m).__module__.startswith("torch.ao"):
        return None
    name = type(m).__name__
    if name in QUANT_STUB_NAMES:
        return OpKind.QUANT_STUB
    if name in DEQUANT_STUB_NAMES:
        return OpKind.DEQUANT_STUB
    return None


def hashable(x: Any) -> bool:
    """``x`` can be a dict key (fx targets may be unhashable callables)."""
    try:
        hash(x)
    except TypeError:
        return False
    return True


def module_traits(m: nn.Module) -> OpTraits:
    """Traits of module ``m`` (by exact type; eager stubs by name)."""
    stub = is_stub(m)
    if stub is not None:
        return _QUANT_STUB if stub is OpKind.QUANT_STUB else _DEQUANT_STUB
    return MODULE_TRAITS.get(type(m), UNKNOWN)


def layer_traits(m: nn.Module) -> OpTraits:
    """Traits of a module of a prepared model, looking through subclasses: eager capture
    quantizes a leaf module by swapping its class for a subclass, so the nearest class of its
    MRO that the table lists decides (:func:`module_traits` matches exact types only)."""
    for cls in type(m).__mro__:
        traits = MODULE_TRAITS.get(cls)
        if traits is not None:
            return traits
    return UNKNOWN


def function_traits(target: Any) -> OpTraits:
    """Traits of a function target (:data:`UNKNOWN` for unlisted or unhashable targets)."""
    if not hashable(target):
        return UNKNOWN
    traits = FUNCTION_TRAITS.get(target)
    if traits is None:
        key = (getattr(target, "__module__", None), getattr(target, "__name__", None))
        traits = NAMED_FUNCTION_TRAITS.get(key, UNKNOWN)  # type: ignore[arg-type]
    return traits


def method_traits(name: str) -> OpTraits:
    """Traits of a tensor method by name."""
    return METHOD_TRAITS.get(str(name), UNKNOWN)


def node_traits(node: fx.Node, root: nn.Module) -> OpTraits:
    """Traits of the op ``node`` calls (``root``: the module owning the graph)."""
    if node.op == "call_module":
        try:
            return module_traits(root.get_submodule(str(node.target)))
        except AttributeError:
            return UNKNOWN
    if node.op == "call_function":
        return function_traits(node.target)
    if node.op == "call_method":
        return method_traits(node.target)
    return UNKNOWN


_HARDTANH_ARGS = ("min_val", "max_val")


def clip_bounds(
    node: fx.Node, root: nn.Module, path: str | None = None
) -> tuple[float, float | None] | None:
    """The ``(lo, hi)`` a clip-like op clamps its input to (``None`` for other ops).

    ``root`` owns the graph; ``path`` is the module path of a ``call_module`` node when its
    target is relative to something else (default: the target).
    """
    if node.op == "call_module":
        mod = root.get_submodule(str(node.target) if path is None else path)
        traits = module_traits(mod)
        if traits.clip_from_args:
            return float(mod.min_val), float(mod.max_val)
        return traits.clip
    traits = node_traits(node, root)
    if traits.clip is not None:
        return traits.clip
    if not traits.clip_from_args:
        return None
    bounds = dict(zip(_HARDTANH_ARGS, node.args[1:3], strict=False))
    bounds.update({k: v for k, v in node.kwargs.items() if k in _HARDTANH_ARGS})
    lo, hi = bounds.get("min_val", -1.0), bounds.get("max_val", 1.0)
    if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)):
        return None  # bounds computed at run time
    return float(lo), float(hi)


def count_macs(
    traits: OpTraits, weight: torch.Tensor, inp: torch.Tensor, out: torch.Tensor
) -> int:
    """Multiply-accumulates of one call of a weighted op (see :class:`MacRule`); 0 otherwise."""
    rule = traits.macs
    if rule is MacRule.CONV_TRANSPOSE:
        return inp.numel() * weight[0].numel()
    if rule is MacRule.CONV:
        return out.numel() * weight[0].numel()
    if rule is MacRule.LINEAR:  # weight [out, in] (addmm: [in, out], weight_axis 1)
        return out.numel() * weight.shape[1 - (traits.weight_axis or 0)]
    return 0


_SHAPE_ATTRS = frozenset({"ndim", "shape"})
_SHAPE_METHODS = frozenset({"dim", "size", "numel", "ndimension", "nelement"})
_METADATA_ATTRS = _SHAPE_ATTRS | {"dtype", "device", "is_cuda"}


def _reads(user: fx.Node, value: fx.Node | None, attrs: frozenset[str]) -> bool:
    if user.op == "call_function" and user.target is getattr:
        return (len(user.args) >= 2 and (value is None or user.args[0] is value)
                and user.args[1] in attrs)
    return (user.op == "call_method" and user.target in _SHAPE_METHODS
            and (value is None or user.args[:1] == (value,)))


_LIKE_METHODS = frozenset({"view_as", "reshape_as", "expand_as", "type_as"})


def read_inputs(n: fx.Node) -> list[fx.Node]:
    """The inputs whose numbers ``n`` reads: ``x.view_as(y)`` / ``reshape_as`` / ``expand_as`` /
    ``type_as`` read only ``y``'s shape or dtype, so their data input is ``x`` alone."""
    if n.op == "call_method" and n.target in _LIKE_METHODS and n.args and isinstance(
            n.args[0], fx.Node):
        return [n.args[0]]
    return list(n.all_input_nodes)


def reads_metadata_only(user: fx.Node, value: fx.Node | None = None) -> bool:
    """``user`` reads only the shape, dtype or device of ``value`` (of its first argument when
    ``value`` is None): ``x.ndim``, ``x.shape``, ``x.size()``, ``x.dtype`` ..."""
    return _reads(user, value, _METADATA_ATTRS)


def reads_shape_only(user: fx.Node, value: fx.Node | None = None) -> bool:
    """Like :func:`reads_metadata_only` for shape reads only (``x.shape``, ``x.size()``,
    ``x.dim()``): the same on a quantized tensor, unlike ``x.dtype``."""
    return _reads(user, value, _SHAPE_ATTRS)
