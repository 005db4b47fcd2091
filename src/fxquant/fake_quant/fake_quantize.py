"""FakeQuantize = observer (statistics) + numerics (fake quantization with an STE), and the
:class:`QuantizerSpec` it is built from (frozen, validated, JSON round trip).

Size (~730 lines): the quantizer is one concept -- the module (:class:`FakeQuantize`, its
learnable variant) and :class:`QuantizerSpec`, the serialisable recipe that builds it and is
its checkpoint format -- kept together so that a constructor argument is added, validated and
serialised in one file.
"""

from __future__ import annotations

import dataclasses
import math as _math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._utils import Factory, LazyShapeBuffers, WithArgs, as_factory, has_hooks
from ..distributed import DistributedSync, merge_pending, observe_distributed
from ..errors import CheckpointError, ConfigError, QuantizerError, bounded, bounded_list
from ..numerics import (
    DEFAULT_EPS,
    QDType,
    QParams,
    ScaleMath,
    dtype_by_name,
    fake_quantize_lsq,
    fake_quantize_ste,
    granularity_from_axis,
    native,
    qint8,
)
from ..numerics.held import Snapshot, is_kept, keepable
from ..observers import (
    FixedScaleObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    Observer,
    ObserverSpec,
    check_scale,
)
from .activation import ClampActivation
from .state import FakeQuantState

__all__ = ["FakeQuantize", "LearnableFakeQuantize", "QuantizerError", "QuantizerSpec",
           "SPEC_VERSION", "check_spec_format"]


class FakeQuantize(LazyShapeBuffers, WithArgs):
    """Simulated quantization of one tensor.

    Args:
        observer: observer class or ``Observer.with_args(...)`` factory (statistics only).
        dtype: quantized dtype; defaults to the fixed observer's dtype, else ``qint8``.
        symmetric: symmetric (zero point 0 / mid-code) or affine range.
        ch_axis: ``None`` per tensor, else per channel on this axis.
        power_of_two: round scales up to powers of two.
        scale_math: :class:`~fxquant.numerics.ScaleMath` used to divide by the scale.
        fixed_in_qat: once calibrated, keep the scale: QAT and later calibration runs do not
            re-observe.  Stored in the ``frozen`` buffer, so it survives ``state_dict``
            save / load (AdaRound and ``load_encodings(freeze=True)`` set it).
        is_weight: weight quantizers may observe their (constant) input lazily in VALIDATION.

    ``forward(x)`` returns a tensor of ``x``'s shape; what it does depends on :attr:`state`
    (see :class:`FakeQuantState`).  Buffers ``scale`` (float32, 0-d or ``[C]``),
    ``zero_point`` (int32), ``calibrated`` and ``state_code`` hold all state.

    Under ``torch.distributed`` the observer's statistics are merged across ranks (see
    :mod:`fxquant.distributed`; ``distributed_sync`` holds the setting).
    """

    distributed_sync: DistributedSync = DistributedSync()
    # the last weight observed in CALIBRATION (_observe_calibration): the observer, the kept
    # tensor itself or None, a snapshot of the observer's range (and of the weight if not kept)
    _seen: tuple[Any, torch.Tensor | None, Snapshot] | None = None

    def __init__(
        self,
        observer: Any = MinMaxObserver,
        dtype: QDType | None = None,
        symmetric: bool = True,
        ch_axis: int | None = None,
        power_of_two: bool = False,
        scale_math: ScaleMath = ScaleMath.DIVIDE,
        fixed_in_qat: bool = False,
        is_weight: bool = False,
        eps: float = DEFAULT_EPS,
        **observer_kwargs: Any,
    ) -> None:
        super().__init__()
        try:
            obs_factory = as_factory(observer)
        except TypeError:
            raise ConfigError(
                f"{type(self).__name__}: observer must be an Observer class or "
                f"Observer.with_args(...), got {bounded(repr(observer))}"
            ) from None
        if ch_axis is not None and (isinstance(ch_axis, bool) or not isinstance(ch_axis, int)):
            raise ConfigError(f"{type(self).__name__}: ch_axis must be None (per tensor) or an "
                              f"int axis, got {bounded(repr(ch_axis))}")
        if ch_axis is not None and obs_factory.cls is not FixedScaleObserver:
            observer_kwargs.setdefault("ch_axis", ch_axis)
        self.observer: Observer = obs_factory(**observer_kwargs)
        if dtype is None:
            dtype = getattr(self.observer, "dtype", None) or qint8
        if not isinstance(dtype, QDType):
            raise ConfigError(
                f"{type(self).__name__}: dtype must be a QDType (e.g. fxquant.qint8), got "
                f"{bounded(repr(dtype))}"
            )
        if not isinstance(scale_math, ScaleMath):
            raise ConfigError(f"{type(self).__name__}: scale_math must be a ScaleMath, got "
                              f"{bounded(repr(scale_math))}")
        self.dtype = dtype
        self.symmetric = bool(symmetric)
        self.ch_axis = ch_axis
        self.power_of_two = bool(power_of_two)
        self.scale_math = scale_math
        self.is_weight = bool(is_weight)
        self.eps = check_scale(f"{type(self).__name__}: eps", eps)
        self._name = ""
        self._init_qparams()
        self.register_buffer("calibrated", torch.tensor(False))
        self.register_buffer("frozen", torch.tensor(bool(fixed_in_qat)))
        self.register_buffer(
            "state_code", torch.tensor(FakeQuantState.QAT.value, dtype=torch.uint8)
        )
        # Python mirrors of the buffers above: forward reads no tensor to decide what to do
        # (refreshed by set_state / set_state_code / load_state_dict; ``_calibrated`` caches
        # only True, a False is re-read from the buffer)
        self._frozen = bool(fixed_in_qat)
        self._state = FakeQuantState.QAT
        self._calibrated = False
        self._dirty = False

    @property
    def fixed_in_qat(self) -> bool:
        """Whether the scale is frozen once calibrated (the persistent ``frozen`` buffer)."""
        return self._frozen

    @fixed_in_qat.setter
    def fixed_in_qat(self, value: bool) -> None:
        self._frozen = bool(value)
        self.frozen.fill_(self._frozen)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # a quantizer built fixed_in_qat (e.g. by a qat_fixed_act template) stays fixed when it
        # loads a checkpoint whose quantizers were not (the calibration it takes scales from):
        # a checkpoint can freeze a scale, never unfreeze one
        built_frozen = self._frozen
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if prefix + "frozen" in missing_keys:  # a state dict saved before ``frozen`` existed
            missing_keys.remove(prefix + "frozen")
        self.fixed_in_qat = bool(self.frozen) or built_frozen
        self._state = FakeQuantState(int(self.state_code))
        self._calibrated = bool(self.calibrated)

    # -- storage -----------------------------------------------------------------------------
    def _init_qparams(self) -> None:
        shape = (0,) if self.ch_axis is not None else ()
        self.register_buffer("scale", torch.ones(shape, dtype=torch.float32))
        self.register_buffer("zero_point", torch.zeros(shape, dtype=torch.int32))

    def _store_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        # new tensors (never in place: autograd may hold the old ones), straight into the
        # buffer table (``Module.__setattr__`` re-registers the buffer: several times slower)
        bufs = self._buffers
        dev = bufs["calibrated"].device
        if torch.is_inference_mode_enabled():  # state outlives the mode: normal tensors
            with torch.inference_mode(False):
                scale, zero_point = scale.clone(), zero_point.clone()
        bufs["scale"] = scale.to(dev)
        bufs["zero_point"] = zero_point.to(device=dev, dtype=torch.int32)

    def _is_calibrated(self) -> bool:
        if not self._calibrated:
            self._calibrated = bool(self.calibrated)
        return self._calibrated

    # -- naming --------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The quantizer's stable name (set by :func:`fxquant.prepare`)."""
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value
        self.observer.name = value

    @property
    def granularity(self):
        """:class:`PerTensor` or :class:`PerChannel` (data, not a string)."""
        return granularity_from_axis(self.ch_axis)

    def qparams(self) -> QParams:
        """The grid this quantizer applies in forward, as one frozen value (detached copies).

        Every consumer (export, encodings, convert, integer simulation, AdaRound, compare,
        summary) asks this instead of reading ``scale`` / ``zero_point``.  Check ``calibrated``
        first: an uncalibrated quantizer returns its initial (meaningless) grid.
        """
        scale, zp = self._applied_scale_zero_point()
        return QParams(
            scale=scale.detach().float().clone(),
            zero_point=zp.detach().round().long(),
            dtype=self.dtype,
            granularity=self.granularity,
            scale_math=self.scale_math,
        )

    def _applied_scale_zero_point(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale, self.zero_point

    # -- spec ----------------------------------------------------------------------------------
    @classmethod
    def with_args(cls, **kwargs: Any) -> Any:
        """A :class:`QuantizerSpec` (the familiar ``with_args`` spelling): a frozen, validated
        description that builds fresh quantizers when called.  A subclass that fxquant does not
        know gives a plain factory instead (not serialisable)."""
        if cls in (FakeQuantize, LearnableFakeQuantize):
            return QuantizerSpec().with_args(learnable=cls is LearnableFakeQuantize, **kwargs)
        return super().with_args(**kwargs)

    def spec(self) -> QuantizerSpec:
        """The spec a fresh quantizer of the same configuration is built from
        (``fq.spec()()``); its scale and statistics are state, in ``state_dict``."""
        return QuantizerSpec(
            dtype=self.dtype,
            symmetric=self.symmetric,
            ch_axis=self.ch_axis,
            observer=ObserverSpec.of(self.observer),
            learnable=isinstance(self, LearnableFakeQuantize),
            power_of_two=self.power_of_two,
            scale_math=self.scale_math,
            fixed_in_qat=self.fixed_in_qat,
            is_weight=self.is_weight,
            eps=self.eps,
        )

    # -- state ---------------------------------------------------------------------------------
    @property
    def state(self) -> FakeQuantState:
        return self._state

    def set_state(self, state: FakeQuantState) -> None:
        """Switch mode; leaving CALIBRATION computes the scale from what was observed.

        Under torch.distributed, leaving CALIBRATION first merges what every rank observed (a
        collective; :func:`set_fake_quantize` merges all its quantizers at once).
        """
        if state is not FakeQuantState.CALIBRATION and self.state is FakeQuantState.CALIBRATION:
            merge_pending([self])
        self._apply_state(state)

    def _apply_state(self, state: FakeQuantState) -> None:
        """Switch mode without a distributed merge (the caller merged already)."""
        if self._dirty and state is not FakeQuantState.CALIBRATION:
            self.update_qparams()
        self.set_state_code(state)

    def set_state_code(self, state: FakeQuantState) -> None:
        """Switch mode *without* computing the scale from pending observations (tools that
        run a model as it is and restore the previous state afterwards)."""
        self.state_code.fill_(state.value)
        self._state = FakeQuantState(state)

    def update_qparams(self) -> None:
        """Recompute scale / zero point from the observer (no-op if it saw nothing)."""
        self.__dict__["_dirty"] = False  # the hot paths write plain attributes directly
        observer = self.observer
        if not observer.has_stats():
            return
        s, z = observer.calculate_qparams(self.dtype, self.symmetric, self.power_of_two, self.eps)
        self._store_qparams(s, z)
        if not self._calibrated:
            self._mark_calibrated()

    def _mark_calibrated(self) -> None:
        self._buffers["calibrated"].fill_(True)
        self.__dict__["_calibrated"] = True

    def _observe(self, x: torch.Tensor) -> None:
        if self.distributed_sync.active():  # torch.distributed with > 1 rank, not opted out
            observe_distributed(self, x, self.state is FakeQuantState.CALIBRATION)
        else:
            self.observer(x)
        self.__dict__["_dirty"] = True

    def _observe_native(self, x: torch.Tensor, update: bool) -> bool:
        """``_observe(x)`` (and ``update_qparams()`` if ``update``) in one native call for the
        min-max observers; False (nothing done) where the Python path must run (other
        observers, statistics merged across ranks, no native kernels ...)."""
        applies, averaging = self._native_averaging()
        if not applies or x.numel() == 0:
            return False
        obs = self._modules["observer"]
        bufs = obs._buffers
        got = native.observe_qparams(x.detach(), bufs["min_val"], bufs["max_val"], averaging,
                                     obs.ch_axis, self.dtype, self.symmetric, self.power_of_two,
                                     self.eps, update)
        if got is None:
            return False
        self._take_observed(got, update)
        return True

    def _native_averaging(self) -> tuple[bool, float | None]:
        """(whether the native observation applies, the moving-average constant or None)."""
        if self.distributed_sync.active():
            return False, None
        obs = self._modules["observer"]
        kind = type(obs)
        if kind is MovingAverageMinMaxObserver:
            return True, obs.averaging_constant
        return kind is MinMaxObserver, None

    def _take_observed(self, got: tuple[Any, Any, int], update: bool) -> None:
        """Settle a native observation's result (``native.observe_qparams``' triple)."""
        scale, zero_point, status = got
        attrs = self.__dict__  # plain attributes: Module.__setattr__ costs more than the rest
        attrs["_dirty"] = True
        if not update:
            return
        if status == native.OBSERVED_ONLY:
            self.update_qparams()
            return
        attrs["_dirty"] = False
        self._store_qparams(scale, zero_point)
        if not self._calibrated:
            self._mark_calibrated()

    def _observe_calibration(self, x: torch.Tensor) -> None:
        """Observe ``x`` in CALIBRATION -- except a weight that a min-max observer has already
        taken in: while the weight and the observer's running ``min_val`` / ``max_val`` still
        hold the bytes they had after that observation (:class:`~fxquant.numerics.held.Snapshot`,
        one ``memcmp`` call), observing it again would leave every bit as it is.  A weight
        marked as kept (:func:`~fxquant.numerics.held.mark_kept`: a ConvBn's folded weight under
        ``no_grad``) is recognised by identity.  Only for :class:`MinMaxObserver` (a moving
        average or a histogram changes with each repetition) and small ordinary tensors
        (:func:`~fxquant.numerics.held.keepable`)."""
        seen = self._seen
        obs = self._modules["observer"]
        if seen is not None and seen[0] is obs and keepable(x):  # observed while keep held
            bufs = obs._buffers
            _, kept, snap = seen
            if kept is x:
                if snap.holds((bufs["min_val"], bufs["max_val"])):
                    return
            elif kept is None and snap.holds((x, bufs["min_val"], bufs["max_val"])):
                return
        keep = (self.is_weight and type(obs) is MinMaxObserver and keepable(x)
                and not self.distributed_sync.active())
        if seen is not None:
            self.__dict__["_seen"] = None  # a plain attribute (Module.__setattr__ is slower)
        if not self._observe_native(x, False):
            self._observe(x)
        if keep:
            bufs = obs._buffers
            mark = x if is_kept(x) else None
            tensors = (bufs["min_val"], bufs["max_val"]) if mark is not None else (
                x, bufs["min_val"], bufs["max_val"])
            self.__dict__["_seen"] = (obs, mark, Snapshot(tensors))

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # decisions from Python mirrors only: no tensor is read unless something is computed
        state = self._state
        if state is FakeQuantState.FLOAT or not x.is_floating_point():
            return x
        if state is FakeQuantState.QAT:
            if not (self._frozen and self._is_calibrated()) and not self._observe_native(x, True):
                self._observe(x)
                self.update_qparams()
        elif state is FakeQuantState.CALIBRATION:
            if not (self._frozen and self._is_calibrated()):
                self._observe_calibration(x)
            return x
        elif self._dirty:
            self.update_qparams()
        return self._quantize_observed(x)

    def _quantize_observed(self, x: torch.Tensor) -> torch.Tensor:
        """The rest of :meth:`forward` once the statistics are taken: fake-quantize ``x``."""
        if not self._is_calibrated():
            if self.is_weight:
                self._observe(x)
                self.update_qparams()
            if not self._is_calibrated():
                raise QuantizerError(
                    f"quantizer {self.name or '<unnamed>'!r} has no scale yet: run "
                    "fxquant.calibrate(model, data) or train in FakeQuantState.QAT first"
                )
        return self._fake_quantize(x)

    def forward_activated(self, x: torch.Tensor, act: ClampActivation) -> torch.Tensor:
        """``self(act.apply(x))``: the quantizer of an activation's output, given the input.

        For a per-tensor quantizer with a min-max observer (or a frozen scale) and a contiguous
        float32 input, this is one native pass in QAT (input requiring grad) -- the observer
        takes the clamped range of ``x``, and the activation, the fake quantization and both
        backward rules run together: the activation's output and its backward pass are never
        made -- and in CALIBRATION (an activation's quantizer, no gradient) -- the activation's
        output is observed as it is written.  Bit for bit ``self(act.apply(x))``, gradients
        included; everywhere else (another state or observer, hooks on this quantizer, NaN in
        ``x``) it is that call.
        """
        if (type(self) is FakeQuantize and self.ch_axis is None and x.dtype == torch.float32
                and not has_hooks(self)):
            state = self._state
            out = None
            if state is FakeQuantState.QAT and x.requires_grad:
                out = self._activated_qat(x, act)
            elif state is FakeQuantState.CALIBRATION and not self.is_weight and not (
                    x.requires_grad and torch.is_grad_enabled()):
                out = self._activated_calibration(x, act)
            if out is not None:
                return out
        return self(act.apply(x))

    def _activated_calibration(self, x: torch.Tensor,
                               act: ClampActivation) -> torch.Tensor | None:
        """:meth:`forward_activated` in CALIBRATION: the activation's output, observed as it is
        written (one pass); None (nothing done) where the native pass does not apply."""
        if self._frozen and self._is_calibrated():
            return act.apply(x)
        applies, averaging = self._native_averaging()
        if not applies or x.numel() == 0:
            return None
        bufs = self._modules["observer"]._buffers
        got = native.act_observe(x.detach(), act.bounds, bufs["min_val"], bufs["max_val"],
                                 averaging, self.dtype, self.symmetric, self.power_of_two,
                                 self.eps)
        if got is None:
            return None
        y, observed = got
        if observed:
            self.__dict__["_dirty"] = True  # a plain attribute (Module.__setattr__ is slower)
        else:  # a NaN or a -0.0: the observer's own path (its error, its order of zeros)
            self._observe_calibration(y)
        return y

    def _activated_qat(self, x: torch.Tensor, act: ClampActivation) -> torch.Tensor | None:
        """:meth:`forward_activated`'s native pass; None (nothing done) where it declines."""
        if not (self._frozen and self._is_calibrated()):
            applies, averaging = self._native_averaging()
            if not applies or x.numel() == 0:
                return None
            bufs = self._modules["observer"]._buffers
            got = native.observe_clamped(x.detach(), act.bounds, bufs["min_val"], bufs["max_val"],
                                         averaging, self.dtype, self.symmetric,
                                         self.power_of_two, self.eps)
            if got is None:
                return None
            self._take_observed(got, True)
        if not self._is_calibrated():
            return self._quantize_observed(act.apply(x))
        bufs = self._buffers
        out = native.act_fake_quant_ste(x, act.bounds, act.gate_hi, bufs["scale"],
                                        bufs["zero_point"], self.dtype,
                                        self.scale_math is ScaleMath.RECIPROCAL)
        return self._fake_quantize(act.apply(x)) if out is None else out

    def _fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        bufs = self._buffers
        return fake_quantize_ste(
            x, bufs["scale"], bufs["zero_point"], self.dtype, self.ch_axis, self.scale_math
        )

    def extra_repr(self) -> str:
        parts = [
            f"name={self.name!r}" if self.name else "",
            f"dtype={self.dtype}",
            f"{'symmetric' if self.symmetric else 'affine'}",
            repr(self.granularity),
            f"state={self.state.name}",
        ]
        if bool(self.calibrated) and self.scale.numel() == 1:
            s, z = float(self.scale.detach()), int(self.zero_point.detach())  # may be Parameters
            parts.append(f"scale={s:.6g}, zero_point={z}")
        return ", ".join(p for p in parts if p)


class LearnableFakeQuantize(FakeQuantize):
    """LSQ / LSQ+ quantizer: scale and zero point are ``nn.Parameter``s trained by backprop.

    They are initialised from the observer (calibration, or the first QAT batch); afterwards the
    observer is off in QAT and gradients move the range.  Zero point is learned only when
    ``symmetric=False``.  The gradient scale follows LSQ: ``1 / sqrt(numel_per_scale * qmax)``.
    """

    def _init_qparams(self) -> None:
        shape = (0,) if self.ch_axis is not None else ()
        self.scale = torch.nn.Parameter(torch.ones(shape))
        self.zero_point = torch.nn.Parameter(torch.zeros(shape), requires_grad=not self.symmetric)

    def _store_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        with torch.inference_mode(False), torch.no_grad():
            dev = self.calibrated.device
            if self.scale.shape != scale.shape:
                self.scale = torch.nn.Parameter(scale.to(dev).clone())
                self.zero_point = torch.nn.Parameter(
                    zero_point.to(dev).float(), requires_grad=not self.symmetric
                )
            else:
                self.scale.copy_(scale)
                self.zero_point.copy_(zero_point.float())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        for name in ("scale", "zero_point"):
            key = prefix + name
            p = self._parameters.get(name)
            if p is not None and key in state_dict and state_dict[key].shape != p.shape:
                self._parameters[name] = torch.nn.Parameter(
                    torch.empty_like(state_dict[key], device=p.device),
                    requires_grad=p.requires_grad,
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._state is FakeQuantState.QAT and self._is_calibrated():
            return self._fake_quantize(x)  # learned: no observation
        return super().forward(x)

    def _applied_scale_zero_point(self) -> tuple[torch.Tensor, torch.Tensor]:
        # what _fake_quantize / fake_quantize_lsq apply: scale clamped at eps, zero point
        # rounded and clamped to the grid
        zp = torch.round(self.zero_point.detach()).clamp(self.dtype.qmin, self.dtype.qmax)
        return self.scale.detach().clamp(min=self.eps), zp

    def _fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        per_scale = x.numel() // max(1, self.scale.numel())
        g = 1.0 / _math.sqrt(max(1, per_scale) * max(1, self.dtype.qmax))
        scale = self.scale.clamp(min=self.eps)
        return fake_quantize_lsq(
            x, scale, self.zero_point, self.dtype, self.ch_axis, self.scale_math, g
        )


def quantizer_factory(obj: Any) -> Factory:
    """Normalise a FakeQuantize class / factory / partial to a :class:`Factory`."""
    return as_factory(obj)


SPEC_VERSION = 1
"""Format version of :meth:`QuantizerSpec.to_dict` (and of QConfig's, which holds them)."""
_SPEC_FORMAT = "fxquant.quantizer"
_MIN_MAX = ObserverSpec(MinMaxObserver)


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"quantizer spec: {name} must be True or False, got "
                          f"{bounded(repr(value))}")


@dataclass(frozen=True)
class QuantizerSpec:
    """A quantizer as frozen, validated, serialisable data: what to build, not its state.

    Calling a spec builds a fresh :class:`FakeQuantize` (:class:`LearnableFakeQuantize` when
    ``learnable``); ``FakeQuantize.with_args(...)`` is the familiar spelling that makes one and
    :meth:`FakeQuantize.spec` reads one back from a quantizer.  Invalid values raise
    :class:`~fxquant.ConfigError` naming the argument, on creation.  :meth:`to_dict` /
    :meth:`from_dict` round-trip through plain JSON values with a format version.

    Attributes:
        dtype: the integer grid (``None``: the fixed-scale observer's dtype, else ``qint8``).
        symmetric: symmetric range (zero point 0 / the middle code) or affine.
        ch_axis: ``None`` per tensor, else per channel on this axis.
        observer: an :class:`~fxquant.observers.ObserverSpec` (an observer class or
            ``Observer.with_args(...)`` is accepted and converted).
        learnable: LSQ: scale and zero point are trained (:class:`LearnableFakeQuantize`).
        power_of_two: scales rounded up to powers of two.
        scale_math: how the scale divides (:class:`~fxquant.numerics.ScaleMath`).
        fixed_in_qat: the scale stays as calibrated during QAT.
        is_weight: a weight quantizer (observes its constant input lazily).
        eps: smallest scale (a normal float32).

    >>> from fxquant.numerics import quint8
    >>> spec = FakeQuantize.with_args(dtype=quint8, symmetric=False)
    >>> spec.to_dict()["dtype"], spec().dtype
    ('quint8', quint8)
    >>> QuantizerSpec.from_dict(spec.to_dict()) == spec
    True
    """

    dtype: QDType | None = None
    symmetric: bool = True
    ch_axis: int | None = None
    observer: ObserverSpec = _MIN_MAX
    learnable: bool = False
    power_of_two: bool = False
    scale_math: ScaleMath = ScaleMath.DIVIDE
    fixed_in_qat: bool = False
    is_weight: bool = False
    eps: float = DEFAULT_EPS

    _FIELDS: ClassVar[tuple[str, ...]] = (
        "dtype", "symmetric", "ch_axis", "observer", "learnable", "power_of_two", "scale_math",
        "fixed_in_qat", "is_weight", "eps",
    )

    def __post_init__(self) -> None:
        obs = ObserverSpec.from_factory(self.observer)
        object.__setattr__(self, "observer", obs)
        fixed_dtype = obs.arg("dtype") if issubclass(obs.type, FixedScaleObserver) else None
        if self.dtype is None:
            object.__setattr__(self, "dtype", fixed_dtype or qint8)
        if not isinstance(self.dtype, QDType):
            raise ConfigError(f"quantizer spec: dtype must be a QDType (e.g. fxquant.qint8), "
                              f"got {bounded(repr(self.dtype))}")
        if fixed_dtype is not None and fixed_dtype != self.dtype:
            raise ConfigError(
                f"quantizer spec: the fixed scale is meant for {fixed_dtype} (FixedScaleObserver "
                f"dtype=) but the quantizer's dtype is {self.dtype}; make them agree"
            )
        for name in ("symmetric", "learnable", "power_of_two", "fixed_in_qat", "is_weight"):
            _check_bool(name, getattr(self, name))
        axis = self.ch_axis
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
            raise ConfigError(f"quantizer spec: ch_axis must be None (per tensor) or an int "
                              f"axis, got {bounded(repr(axis))}")
        if not isinstance(self.scale_math, ScaleMath):
            try:
                object.__setattr__(self, "scale_math", ScaleMath(self.scale_math))
            except ValueError:
                raise ConfigError(
                    f"quantizer spec: scale_math must be a ScaleMath "
                    f"({bounded_list(m.value for m in ScaleMath)}), got "
                    f"{bounded(repr(self.scale_math))}"
                ) from None
        object.__setattr__(self, "eps", check_scale("quantizer spec: eps", self.eps))

    # -- the factory protocol (what prepare and setters call) ------------------------------
    @property
    def cls(self) -> type[FakeQuantize]:
        """The quantizer class a call builds."""
        return LearnableFakeQuantize if self.learnable else FakeQuantize

    @property
    def fixed_scale(self) -> float | None:
        """The constant scale of a fixed-scale quantizer (``None`` otherwise)."""
        if issubclass(self.observer.type, FixedScaleObserver):
            return self.observer.arg("scale")
        return None

    def build(self) -> FakeQuantize:
        """A fresh quantizer of this spec."""
        return self.cls(
            observer=self.observer.factory(), dtype=self.dtype, symmetric=self.symmetric,
            ch_axis=self.ch_axis, power_of_two=self.power_of_two, scale_math=self.scale_math,
            fixed_in_qat=self.fixed_in_qat, is_weight=self.is_weight, eps=self.eps,
        )

    def __call__(self, **override: Any) -> FakeQuantize:
        return (self.with_args(**override) if override else self).build()

    def with_args(self, **changes: Any) -> QuantizerSpec:
        """A copy with ``changes``: spec fields, ``observer=`` (a class, factory or spec), and
        arguments of the observer (``averaging_constant=0.1``)."""
        fields = {k: v for k, v in changes.items() if k in self._FIELDS}
        rest = {k: v for k, v in changes.items() if k not in self._FIELDS}
        if rest:
            obs = ObserverSpec.from_factory(fields.get("observer", self.observer))
            fields["observer"] = obs.with_args(**rest)  # ConfigError names unknown arguments
        return dataclasses.replace(self, **fields)

    def arg(self, key: str, default: Any = None) -> Any:
        """The value of field ``key`` (``default`` for anything else)."""
        return getattr(self, key) if key in self._FIELDS else default

    def __repr__(self) -> str:
        defaults = QuantizerSpec(observer=self.observer)
        shown = [f"{k}={getattr(self, k)!r}" for k in self._FIELDS
                 if k != "learnable" and getattr(self, k) != getattr(defaults, k)]
        if self.observer != _MIN_MAX:
            shown.insert(0, f"observer={self.observer!r}")
        return f"{self.cls.__name__}.with_args({', '.join(shown)})"

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values: ``{"format", "version", "dtype": "qint8", ..., "observer": {..}}``."""
        return {
            "format": _SPEC_FORMAT,
            "version": SPEC_VERSION,
            "dtype": self.dtype.name,
            "symmetric": self.symmetric,
            "ch_axis": self.ch_axis,
            "observer": self.observer.to_dict(),
            "learnable": self.learnable,
            "power_of_two": self.power_of_two,
            "scale_math": self.scale_math.value,
            "fixed_in_qat": self.fixed_in_qat,
            "is_weight": self.is_weight,
            "eps": self.eps,
        }

    @classmethod
    def from_dict(cls, data: Any) -> QuantizerSpec:
        """Inverse of :meth:`to_dict`.  A dict from a newer fxquant (higher format version),
        or one that is not a quantizer spec, raises :class:`~fxquant.CheckpointError`."""
        check_spec_format(data, _SPEC_FORMAT, "quantizer spec")
        unknown = sorted(set(data) - {*cls._FIELDS, "format", "version"})
        if unknown:
            raise CheckpointError(f"quantizer spec: unknown keys {bounded_list(unknown)}")
        values = {k: data[k] for k in cls._FIELDS if k in data}
        try:
            if "dtype" in values:
                values["dtype"] = dtype_by_name(values["dtype"])
            if "observer" in values:
                values["observer"] = ObserverSpec.from_dict(values["observer"])
            return cls(**values)
        except (ConfigError, ValueError) as exc:
            raise CheckpointError(f"quantizer spec: {exc}") from None


def check_spec_format(data: Any, fmt: str, what: str) -> None:
    """Raise :class:`~fxquant.CheckpointError` unless ``data`` is a dict of format ``fmt`` with
    a version this fxquant reads (at most :data:`SPEC_VERSION`)."""
    if not isinstance(data, dict) or data.get("format") != fmt:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{what}: not an {fmt!r} dict (format {bounded(repr(got))})")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{what}: bad format version {bounded(repr(version))}")
    if version > SPEC_VERSION:
        raise CheckpointError(
            f"{what}: written by a newer fxquant (format version {version}; this one reads up "
            f"to {SPEC_VERSION}): upgrade fxquant to load it"
        )
