"""NVIDIA's ``TensorQuantizer`` module: calibrate (amax) and fake-quantize one tensor."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ....errors import ConfigError, ObserverError
from .. import calib
from ..tensor_quant import QuantDescriptor, bounds, fake_tensor_quant, tensor_quant

__all__ = ["TensorQuantizer"]


def _exporting() -> bool:
    """True inside ``torch.onnx.export`` (TorchScript) or a ``torch.export`` trace (the
    dynamo ONNX exporter), where quantizers become QuantizeLinear / DequantizeLinear."""
    return bool(torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting())


class TensorQuantizer(nn.Module):
    """Quantizes the tensors passed through it (NVIDIA's ``TensorQuantizer``).

    Args:
        quant_desc: a :class:`~..tensor_quant.QuantDescriptor`.
        disabled: pass inputs through unchanged.
        if_quant: fake-quantize (the "quant" stage).
        if_clip: not supported (learned amax).
        if_calib: feed inputs to the calibrator (the "calib" stage).

    Stages: ``enable()`` / ``disable()`` the whole module, ``enable_quant()`` /
    ``disable_quant()``, ``enable_calib()`` / ``disable_calib()``; ``load_calib_amax(method,
    percentile=...)`` moves the calibrator's amax into the ``_amax`` buffer (``amax``).  Without
    an amax, quantization uses the current tensor's (dynamic) amax.
    ``TensorQuantizer.use_fb_fake_quant = True`` makes forward call torch's
    ``fake_quantize_per_{tensor,channel}_affine`` (scale ``amax / max_bound``, full range); it
    does so by itself inside ``torch.onnx.export`` (either exporter), which then writes
    QuantizeLinear / DequantizeLinear, as ModelOpt's quantizers do.
    """

    use_fb_fake_quant: ClassVar[bool] = False

    def __init__(self, quant_desc: QuantDescriptor | None = None, disabled: bool = False,
                 if_quant: bool = True, if_clip: bool = False, if_calib: bool = False) -> None:
        super().__init__()
        desc = quant_desc if quant_desc is not None else QuantDescriptor()
        self._num_bits = desc.num_bits
        self._fake_quant = desc.fake_quant
        self._axis = desc.axis
        self._scale_amax = desc.scale_amax
        self._learn_amax = desc.learn_amax
        self._unsigned = desc.unsigned
        self._narrow_range = desc.narrow_range
        self._disabled = disabled
        self._if_quant = if_quant
        self._if_calib = if_calib
        self._scale: Tensor | None = None
        if if_clip:
            raise ConfigError("TensorQuantizer: the clip stage (learned amax) is not supported")
        if desc.amax is not None:
            self.register_buffer("_amax", desc.amax.clone())
        self._calibrator: Any
        if desc.calib_method == "histogram":
            self._calibrator = calib.HistogramCalibrator(self._num_bits, self._axis,
                                                         self._unsigned)
        else:
            self._calibrator = calib.MaxCalibrator(self._num_bits, self._axis, self._unsigned)

    # -- properties ------------------------------------------------------------------------
    num_bits = property(lambda self: self._num_bits,
                        lambda self, v: setattr(self, "_num_bits", int(v)))
    unsigned = property(lambda self: self._unsigned,
                        lambda self, v: setattr(self, "_unsigned", bool(v)))
    narrow_range = property(lambda self: self._narrow_range,
                            lambda self, v: setattr(self, "_narrow_range", bool(v)))
    axis = property(lambda self: self._axis)
    fake_quant = property(lambda self: self._fake_quant)

    @property
    def is_enabled(self) -> bool:
        return not self._disabled

    @property
    def scale(self) -> Tensor | None:
        """The last scale multiplier of a real (not fake) quantization."""
        return self._scale

    @property
    def amax(self) -> Tensor | None:
        """The fixed amax (``None``: dynamic, from each tensor)."""
        return self._buffers.get("_amax")

    @amax.setter
    def amax(self, value: Any) -> None:
        value = torch.as_tensor(value, dtype=torch.float32).detach().clone()
        old = self._buffers.get("_amax")
        if old is None:
            self.register_buffer("_amax", value)
        elif old.shape != value.shape:
            raise ConfigError(f"TensorQuantizer: amax has shape {tuple(old.shape)}, cannot set "
                              f"one of shape {tuple(value.shape)}")
        else:
            old.copy_(value)

    @property
    def step_size(self) -> Tensor | None:
        amax = self.amax
        return None if amax is None else amax / bounds(self._num_bits, self._unsigned,
                                                       self._narrow_range)[1]

    # -- stages ------------------------------------------------------------------------------
    def enable(self) -> None:
        self._disabled = False

    def disable(self) -> None:
        self._disabled = True

    def enable_quant(self) -> None:
        self._if_quant = True

    def disable_quant(self) -> None:
        self._if_quant = False

    def enable_calib(self) -> None:
        if self._calibrator is None:
            raise ConfigError("TensorQuantizer: no calibrator to enable")
        self._if_calib = True

    def disable_calib(self) -> None:
        self._if_calib = False

    def enable_clip(self) -> None:
        raise ConfigError("TensorQuantizer: the clip stage (learned amax) is not supported")

    def disable_clip(self) -> None:
        """Nothing to disable: the clip stage is not supported."""

    def load_calib_amax(self, *args: Any, **kwargs: Any) -> None:
        """Set ``amax`` from the calibrator (``method`` / ``percentile`` for histograms).
        ``strict=False``: a calibrator that saw nothing gives amax NaN instead of an error."""
        strict = kwargs.pop("strict", True)
        amax = self._calibrator.compute_amax(*args, **kwargs)
        if amax is None:
            if strict:
                raise ObserverError(
                    "TensorQuantizer.load_calib_amax: the calibrator has seen no tensor; run "
                    "data through the model with enable_calib() first (strict=False sets NaN)"
                )
            amax = torch.tensor(float("nan"))
        self.amax = amax

    def reset_amax(self) -> None:
        """Forget the fixed amax (dynamic again)."""
        self._buffers.pop("_amax", None)

    # -- forward -----------------------------------------------------------------------------
    def _dynamic_amax(self, x: Tensor) -> Tensor:
        if self._axis is None:
            return x.detach().abs().amax()
        axis = self._axis % x.dim()
        dims = [d for d in range(x.dim()) if d != axis]
        return x.detach().abs().amax(dim=dims, keepdim=True)

    def _get_amax(self, x: Tensor) -> Tensor:
        amax = self.amax
        if amax is None:
            amax = self._dynamic_amax(x)
        if self._scale_amax is not None:
            amax = amax.detach() * self._scale_amax
        return amax.to(x.device)

    def _fb_fake_quant(self, x: Tensor, amax: Tensor) -> Tensor:
        _, bound = bounds(self._num_bits, self._unsigned, False)
        lo = 0 if self._unsigned else -bound - 1
        if amax.numel() == 1:  # tensor qparams: no data-dependent Python float (torch.export)
            scale = (amax.detach().reshape(()) / bound).float()
            zero = torch.zeros((), dtype=torch.int32, device=x.device)
            return torch.fake_quantize_per_tensor_affine(x, scale, zero, lo, bound)
        flat = amax.detach().reshape(-1)
        axis = list(amax.shape).index(flat.numel())
        scale = (flat / bound).float()
        zp = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(x, scale, zp, axis, lo, bound)

    def forward(self, inputs: Tensor) -> Tensor:
        if self._disabled:
            return inputs
        if self._if_calib:
            self._calibrator.collect(inputs)
        if not self._if_quant:
            return inputs
        amax = self._get_amax(inputs)
        if not self._fake_quant:
            outputs, self._scale = tensor_quant(inputs, amax, self._num_bits, self._unsigned,
                                                self._narrow_range)
            return outputs
        if TensorQuantizer.use_fb_fake_quant or _exporting():
            return self._fb_fake_quant(inputs, amax)
        return fake_tensor_quant(inputs, amax, self._num_bits, self._unsigned,
                                 self._narrow_range)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        key = prefix + "_amax"
        if key in state_dict:
            mine = self._buffers.get("_amax")
            if mine is None or mine.shape != state_dict[key].shape:
                self.register_buffer("_amax", torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        if self._disabled:
            return "disabled"
        amax = self.amax
        if amax is None:
            a = "dynamic"
        elif amax.numel() == 1:
            a = f"{float(amax):.4f}"
        else:
            a = f"[{float(amax.min()):.4f}, {float(amax.max()):.4f}]({amax.numel()})"
        s = f"{'unsigned ' if self._unsigned else ''}{self._num_bits}bit"
        s += " narrow" if self._narrow_range else ""
        s += " fake" if self._fake_quant else ""
        s += f" axis={self._axis}" if self._axis is not None else " per-tensor"
        s += f" amax={a} calibrator={type(self._calibrator).__name__}"
        s += " quant" if self._if_quant else ""
        s += " calib" if self._if_calib else ""
        return s
