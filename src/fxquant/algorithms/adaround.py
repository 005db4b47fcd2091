"""AdaRound: learn, layer by layer, whether each weight rounds up or down.

For every weight-quantized convolution / linear layer of a calibrated prepared model, in
execution order (Nagel et al. 2020; the math lives in :mod:`.adaround_math`):

1. **Cache** the layer's input as the *quantized* model computes it (earlier layers already
   rounded by AdaRound) and the layer's output as the *float* model computes it (asymmetric
   reconstruction), passed through the relu that follows the layer when it is the layer's only
   user.  Convolutions are cached as im2col rows of randomly drawn output positions (at most
   ``max_samples`` rows), linear layers as rows of their input; a transposed convolution keeps
   whole examples.  Nothing grows with the number of calibration images beyond that bound.
2. **Optimise** the rounding logits ``V`` (Adam, nothing else changes) on random mini-batches of
   those rows: ``||f(W x) - f(W_soft x_q)||^2 + reg_param * sum(1 - |2 h(V) - 1|^beta)``.
   One step is one (grouped) matrix product, so its cost does not depend on the image size.
3. **Freeze** the learned rounding (or nearest rounding, if that reconstructs the cached rows
   better, as it can after short runs): write ``(q - zp) * scale`` of the chosen codes into the
   float weight, so that the layer's weight quantizer reproduces those codes exactly
   (``fake_quantize(w) == w``; for a ``ConvBn`` the *folded* weight is what is quantized, so the
   conv weight becomes ``w_q / bn_scale_factor``), and mark the quantizer ``fixed_in_qat``.

The returned model carries a :class:`ReconstructionReport` (``qmodel.reconstruction_report``,
also printable) with per-layer iterations, seconds and reconstruction MSE before / after.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..fake_quant import FakeQuantize, FakeQuantState, fake_quantize_state
from ..graph.ops import layer_traits
from ..graph.report import check_prepared
from ..graph.simulate import float_simulation
from ..modelio import ModelInputs, call_model
from ..nn import MIN_SCALE, ConvBnNd, QuantWeightMixin, bn_scale_factor
from ..numerics import broadcast_param, dequantize, quantize_codes
from . import adaround_math as am
from .adaround_data import (
    _Batches,
    build_layer_cache,
    following_activation,
    materialize,
)

__all__ = [
    "adaround",
    "AdaRoundQuantizer",
    "AdaRoundOptions",
    "ReconstructionReport",
    "ReconstructionResult",
    "adaroundable_layers",
    "freeze_rounding",
    "default_iterations",
]

REPORT_ATTR = "reconstruction_report"



def default_iterations(bits: int) -> int:
    """AdaRound's default iteration count: 10000, or 15000 below 8 bits (AIMET's defaults)."""
    return 15000 if bits < 8 else 10000


# -- report ---------------------------------------------------------------------------------
@dataclass
class ReconstructionResult:
    """One optimised unit (a layer, or a block of layers).

    ``mse_before`` is the reconstruction error of nearest rounding, ``mse_after`` of the learned
    rounding, both on the same cached samples (mean squared error per output element).  When
    the learned rounding came out worse (short runs can end with a gap between the soft and
    the hard rounding), the nearest rounding is kept: ``kept_nearest``.
    """

    name: str
    layers: tuple[str, ...]
    iterations: int
    seconds: float
    num_samples: int
    mse_before: float
    mse_after: float
    kept_nearest: bool = False


@dataclass
class ReconstructionReport:
    """What :func:`adaround` / :func:`fxquant.algorithms.reconstruct` did, unit by unit."""

    method: str
    results: list[ReconstructionResult] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        head = ("unit", "layers", "iters", "seconds", "samples", "mse nearest", "mse learned",
                "kept")
        rows = [
            (r.name, str(len(r.layers)), str(r.iterations), f"{r.seconds:.2f}",
             str(r.num_samples), f"{r.mse_before:.4g}", f"{r.mse_after:.4g}",
             "nearest" if r.kept_nearest else "learned")
            for r in self.results
        ]
        widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [f"{self.method}: {len(self.results)} unit(s), {self.seconds:.1f} s",
                 fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*r) for r in rows]
        return "\n".join(lines)


# -- the rounding variable ---------------------------------------------------------------------
def _qparams(fq: FakeQuantize) -> tuple[Tensor, Tensor]:
    """``(scale, int32 zero_point)`` of the grid ``fq`` applies (:meth:`FakeQuantize.qparams`)."""
    qp = fq.qparams()
    return qp.scale, qp.zero_point.to(torch.int32)


class AdaRoundQuantizer(nn.Module):
    """Stands in for a layer's weight quantizer while its rounding is learned.

    Built from the quantizer and the exact tensor it quantizes (the folded weight of a
    ``ConvBn``); ``forward`` ignores its argument and returns the soft-rounded weight
    (``hard=True``: the hard-rounded one).  ``v`` is the only parameter.  Set ``beta`` (None:
    no regulariser) before a forward; the regulariser of that forward is left in ``last_reg``.
    """

    def __init__(self, fq: FakeQuantize, weight: Tensor) -> None:
        super().__init__()
        w = weight.detach().float()
        scale, zp = _qparams(fq)
        self.dtype, self.axis = fq.dtype, fq.ch_axis
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zp)
        w_floor, frac = am.floor_codes(w, scale, self.axis, fq.scale_math)
        self.register_buffer("w_floor", w_floor)
        self.register_buffer("scale_b", broadcast_param(scale, w, self.axis))
        nearest = quantize_codes(w, scale, zp, fq.dtype, self.axis, fq.scale_math)
        self.register_buffer("nearest_codes", nearest)  # what the layer's own quantizer gives
        self.register_buffer("nearest", dequantize(nearest, scale, zp, self.axis))
        zps = zp.unique()
        if zps.numel() <= 1:  # one zero point: scalar bounds (cheaper clamps)
            z = int(zps[0]) if zps.numel() else 0
            self.lo, self.hi = float(self.dtype.qmin - z), float(self.dtype.qmax - z)
        else:
            zb = broadcast_param(zp.float(), w, self.axis)
            self.lo, self.hi = self.dtype.qmin - zb, self.dtype.qmax - zb
        self.v = nn.Parameter(am.init_rounding_logits(frac))
        self.hard = False
        self.beta: float | None = None
        self.last_reg: Tensor | None = None

    def soft_weight(self) -> Tensor:
        w, self.last_reg = am.soft_round(
            self.v, self.w_floor, self.lo, self.hi, self.scale_b, self.beta
        )
        return w

    def codes(self) -> Tensor:
        """The hard-rounded integer codes ``q`` (float tensor, zero point included)."""
        c = am.hard_codes(self.w_floor, self.v.detach(), self.zero_point, self.dtype, self.axis)
        return c + broadcast_param(self.zero_point.to(c.dtype), c, self.axis)

    def hard_weight(self) -> Tensor:
        return dequantize(self.codes(), self.scale, self.zero_point, self.axis)

    def forward(self, x: Tensor) -> Tensor:
        return self.hard_weight() if self.hard else self.soft_weight()


# -- layers ------------------------------------------------------------------------------------
def _is_adaroundable(m: nn.Module) -> bool:
    fq = getattr(m, "weight_fake_quant", None)
    return (
        isinstance(m, (QuantWeightMixin, ConvBnNd))
        and layer_traits(m).multiplies_weight
        and isinstance(fq, FakeQuantize)
    )


def adaroundable_layers(qmodel: nn.Module) -> list[str]:
    """Names of the weight-quantized conv / linear layers, in registration order."""
    return [n for n, m in qmodel.named_modules() if _is_adaroundable(m)]


def quantized_weight_and_bias(m: nn.Module) -> tuple[Tensor, Tensor | None]:
    """``(weight the quantizer sees, bias)``: folded for a ConvBn (running statistics)."""
    if isinstance(m, ConvBnNd):
        w, b = m.folded_weight_and_bias()
        return w.detach(), b.detach()
    return m.weight.detach(), None if m.bias is None else m.bias.detach()


def freeze_rounding(module: nn.Module, codes: Tensor) -> None:
    """Write integer ``codes`` into ``module``'s weight and pin its weight quantizer's scale.

    Afterwards ``module.weight_fake_quant`` maps the weight it quantizes (the folded weight of a
    ``ConvBn``) to exactly ``(codes - zp) * scale``.
    """
    fq: FakeQuantize = module.weight_fake_quant  # type: ignore[assignment]
    scale, zp = _qparams(fq)
    target = dequantize(codes, scale, zp, fq.ch_axis).to(module.weight.dtype)
    with torch.no_grad():
        if isinstance(module, ConvBnNd):
            _write_folded_weight(module, target)
        else:
            module.weight.copy_(target)
    fq.fixed_in_qat = True


def _write_folded_weight(m: ConvBnNd, target: Tensor) -> None:
    """Set ``m.weight`` so that the folded weight equals ``target`` (to the last bit if possible).

    ``w = target / sf`` lands within an ulp; a few ``nextafter`` steps fix the rest.  Channels
    whose BN scale factor is below ``MIN_SCALE`` keep their weight.
    """
    bn = m.bn
    sf = bn_scale_factor(bn.running_var, bn.eps, bn.weight).detach()
    view = (-1,) + (1,) * (target.dim() - 1)
    ok = (sf.abs() >= MIN_SCALE).reshape(view)
    sfv = sf.reshape(view)
    old = m.weight.detach().clone()
    w = torch.where(ok, target / torch.where(ok, sfv, torch.ones_like(sfv)), old)
    for _ in range(8):
        m.weight.copy_(w)
        folded = m.folded_weight_and_bias()[0].detach()
        bad = (folded != target) & ok
        if not bool(bad.any()):
            return
        up = (target - folded) * sfv > 0  # moving w up moves the folded weight towards target
        step = torch.where(up, torch.full_like(w, math.inf), torch.full_like(w, -math.inf))
        w = torch.where(bad, torch.nextafter(w, step), w)
    # a product that cannot hit target exactly still quantizes to the same codes


# -- the optimisation --------------------------------------------------------------------------
@dataclass(frozen=True)
class AdaRoundOptions:
    """The knobs of :func:`adaround` (see there), shared with block reconstruction."""

    num_iterations: int | None = None
    reg_param: float = 0.01
    beta_range: tuple[float, float] = (20.0, 2.0)
    warm_start: float = 0.2
    lr: float = 1e-3
    batch_size: int = 512
    max_samples: int = 32768
    progress: bool = True
    seed: int = 0
    num_threads: int | None = 1

    def __post_init__(self) -> None:
        if self.num_iterations is not None and self.num_iterations < 0:
            raise ConfigError(f"num_iterations must be >= 0, got {self.num_iterations}")
        if not 0.0 <= self.warm_start <= 1.0:
            raise ConfigError(f"warm_start must be in [0, 1], got {self.warm_start}")
        if len(self.beta_range) != 2 or min(self.beta_range) <= 0:
            raise ConfigError(f"beta_range must be two positive numbers, got {self.beta_range}")
        if self.reg_param < 0 or self.lr <= 0:
            raise ConfigError(f"need reg_param >= 0 and lr > 0, got {self.reg_param}, {self.lr}")
        if self.batch_size < 1 or self.max_samples < 1:
            raise ConfigError("batch_size and max_samples must be positive")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"num_threads must be positive or None, got {self.num_threads}")

    def iterations(self, bits: int) -> int:
        return default_iterations(bits) if self.num_iterations is None else self.num_iterations

    def generator(self, unit: int) -> torch.Generator:
        """The random stream of the ``unit``-th layer / block."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + unit)


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block (None: unchanged)."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(old)


def optimize_rounding(
    params: list[AdaRoundQuantizer], loss_fn: Callable[[], Tensor], num_iterations: int,
    opts: AdaRoundOptions, desc: str,
) -> None:
    """Adam on the ``v`` of ``params``: ``loss_fn()`` plus the annealed rounding regulariser.

    ``loss_fn`` runs the forward that calls the quantizers (each leaves its regulariser).
    """
    vs = [a.v for a in params]
    fused = all(v.device.type in ("cpu", "cuda") and v.dtype == torch.float32 for v in vs)
    opt = torch.optim.Adam(vs, lr=opts.lr, fused=fused)
    bar = tqdm(total=num_iterations, desc=desc, disable=not opts.progress, leave=False)
    with bar, intra_op_threads(opts.num_threads):
        for step in range(num_iterations):
            beta = am.annealed_beta(step, num_iterations, opts.beta_range, opts.warm_start)
            beta = beta if opts.reg_param else None
            for a in params:
                a.beta, a.last_reg = beta, None
            loss = loss_fn()
            if beta is not None:
                regs = [a.last_reg for a in params if a.last_reg is not None]
                loss = loss + opts.reg_param * torch.stack(regs).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
    for a in params:
        a.beta = a.last_reg = None


def _with_quantizer(m: nn.Module, ada: AdaRoundQuantizer, x: Tensor) -> Tensor:
    saved = m.weight_fake_quant
    m.weight_fake_quant = ada
    try:
        return m(x)
    finally:
        m.weight_fake_quant = saved


def _round_layer(
    qmodel: nn.Module, fmodel: nn.Module, name: str, batches: list[ModelInputs],
    opts: AdaRoundOptions, gen: torch.Generator,
) -> ReconstructionResult:
    """AdaRound one layer, freeze it, and report."""
    t0 = time.perf_counter()
    m = qmodel.get_submodule(name)
    act = following_activation(qmodel, name)
    cache = build_layer_cache(qmodel, fmodel, name, batches, act, opts.max_samples, gen)
    w, bias = quantized_weight_and_bias(m)
    ada = AdaRoundQuantizer(m.weight_fake_quant, w).to(w.device)
    finish = act if act is not None else (lambda t: t)

    def output(x: Tensor, nearest: bool = False) -> Tensor:
        """Layer output for cached ``x`` with AdaRound's weight (soft, or hard once
        ``ada.hard``), or with nearest rounding."""
        if cache.rows:
            return finish(am.rows_forward(m, x, ada.nearest if nearest else ada(x), bias))
        return finish(m(x) if nearest else _with_quantizer(m, ada, x))

    def mse(nearest: bool) -> float:
        total = 0.0
        with torch.no_grad():
            for i in range(0, cache.x.shape[0], 4096 if cache.rows else 8):
                chunk = slice(i, i + (4096 if cache.rows else 8))
                total += float((output(cache.x[chunk], nearest) - cache.y[chunk]).square().sum())
        return total / max(1, cache.y.numel())

    before = mse(nearest=True)
    sampler = _Batches(cache, opts.batch_size if cache.rows else max(1, opts.batch_size // 16),
                       gen)

    def loss_fn() -> Tensor:
        x, y = sampler.next()
        return am.reconstruction_loss(output(x), y, 1)

    iters = opts.iterations(m.weight_fake_quant.dtype.bits)
    optimize_rounding([ada], loss_fn, iters, opts, f"adaround {name}")
    ada.hard = True
    after = mse(nearest=False)
    keep_nearest = after > before
    freeze_rounding(m, ada.nearest_codes if keep_nearest else ada.codes())
    return ReconstructionResult(name, (name,), iters, time.perf_counter() - t0,
                                cache.x.shape[0], before, after, keep_nearest)


def adaround_layers(
    qmodel: nn.Module, fmodel: nn.Module, names: list[str], batches: list[ModelInputs],
    opts: AdaRoundOptions, report: ReconstructionReport, first_unit: int = 0,
) -> None:
    """Layer-wise AdaRound of ``names`` in that order (the engine of :func:`adaround`)."""
    for i, name in enumerate(names):
        result = _round_layer(qmodel, fmodel, name, batches, opts, opts.generator(first_unit + i))
        report.results.append(result)


@contextlib.contextmanager
def working_mode(qmodel: nn.Module) -> Iterator[None]:
    """Eval mode, quantizers in VALIDATION and no parameter gradients; all restored after.
    The model runs the float simulation (rounding is optimized against it, through its layers'
    forward hooks)."""
    was_training = qmodel.training
    grads = [(p, p.requires_grad) for p in qmodel.parameters()]
    qmodel.eval()
    try:
        for p, _ in grads:
            p.requires_grad_(False)
        with fake_quantize_state(qmodel, FakeQuantState.VALIDATION), float_simulation():
            yield
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
        qmodel.train(was_training)


def float_copy(qmodel: nn.Module) -> nn.Module:
    """A copy of ``qmodel`` with every quantizer off (the float reference)."""
    fmodel = copy.deepcopy(qmodel)
    for m in fmodel.modules():
        if isinstance(m, FakeQuantize):
            m.set_state(FakeQuantState.FLOAT)
    return fmodel.eval()


def execution_order(qmodel: nn.Module, names: list[str], inputs: ModelInputs) -> list[str]:
    """``names`` sorted by when each module is first called on ``inputs`` (uncalled ones
    dropped)."""
    order: dict[str, int] = {}

    def hook_for(name: str):
        def hook(mod: nn.Module, args: tuple, out: Any) -> None:  # must return None
            order.setdefault(name, len(order))

        return hook

    handles = [qmodel.get_submodule(n).register_forward_hook(hook_for(n)) for n in names]
    try:
        with torch.no_grad():
            call_model(qmodel, inputs)
    finally:
        for h in handles:
            h.remove()
    return sorted(order, key=order.__getitem__)


def adaround(
    qmodel: nn.Module,
    data: Iterable[Any],
    *,
    num_iterations: int | None = None,
    reg_param: float = 0.01,
    beta_range: tuple[float, float] = (20, 2),
    warm_start: float = 0.2,
    num_batches: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 512,
    max_samples: int = 32768,
    progress: bool = True,
    seed: int = 0,
    num_threads: int | None = 1,
) -> nn.Module:
    """AdaRound every weight-quantized conv / linear layer of a calibrated ``qmodel``.

    Args:
        qmodel: a model from :func:`fxquant.prepare`, calibrated (activation scales fixed).
        data: calibration batches (a DataLoader or any iterable; read once, up to
            ``num_batches``).
        num_iterations: Adam steps per layer; ``None``: 10000, or 15000 for weights below 8
            bits.
        reg_param: weight of the rounding regulariser.
        beta_range: ``(start, end)`` of the annealed regulariser exponent.
        warm_start: fraction of the iterations without regulariser.
        lr: Adam learning rate for the rounding logits.
        batch_size: cached rows per step (im2col rows of a conv, rows of a linear); a
            transposed conv uses ``batch_size // 16`` whole examples.
        max_samples: rows cached per layer at most (also bounded by 256 MiB).
        progress: show progress bars.
        seed: seeds the sampling of rows and mini-batches (same seed, same weights).
        num_threads: torch intra-op threads while optimising (restored afterwards; None: leave
            torch's setting).  One step works on small matrices: on 2 cores a second thread
            gained nothing measurable on an idle machine and cost 4x on a busy one.

    Layers are processed in execution order; each sees the output of the already rounded
    layers before it.  Afterwards every such layer's weight is its quantized value and its
    weight quantizer is ``fixed_in_qat``.  Returns ``qmodel`` (changed in place) with a
    :class:`ReconstructionReport` in ``qmodel.reconstruction_report``.
    """
    check_prepared(qmodel, "adaround")
    opts = AdaRoundOptions(num_iterations, reg_param, tuple(beta_range), warm_start, lr,
                           batch_size, max_samples, progress, seed, num_threads)
    t0 = time.perf_counter()
    batches = materialize(qmodel, data, num_batches)
    report = ReconstructionReport("adaround")
    with working_mode(qmodel):
        names = execution_order(qmodel, adaroundable_layers(qmodel), batches[0])
        adaround_layers(qmodel, float_copy(qmodel), names, batches, opts, report)
    report.seconds = time.perf_counter() - t0
    setattr(qmodel, REPORT_ATTR, report)
    return qmodel
