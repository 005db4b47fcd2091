"""Runtime vs simulation, counted in quantization steps: :class:`TensorDiff`.

For a tensor on a quantizer's grid the difference of each element is ``round((runtime -
simulation) / scale)`` (:meth:`fxquant.numerics.QParams.signed_steps`); 0 means the same integer
code, and a runtime NaN / Inf counts as infinitely far.  A float tensor (no grid) counts an
element as identical within :data:`FLOAT_RTOL` of the tensor's largest magnitude.
:class:`StepCounter` accumulates the same statistics over several batches.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import VerifyError, bounded
from ..numerics import QParams

__all__ = ["TensorDiff", "StepCounter", "tensor_diff", "step_counts", "HIST_CLIP", "FLOAT_RTOL"]

HIST_CLIP = 5
"""Histogram bins beyond +-HIST_CLIP steps are merged into +-HIST_CLIP."""
FLOAT_RTOL = 1e-5
"""A float (unquantized) output element counts as identical within this fraction of the
output's largest magnitude."""
_FAR = np.iinfo(np.int64).max


@dataclass(frozen=True)
class TensorDiff:
    """Runtime vs simulation for one tensor.

    Attributes:
        name: ONNX tensor name (a graph output, or ``<tensor>_dequantized``).
        quantizer: module path of the quantizer whose grid the tensor lies on (None: float).
        shape: shape of the compared tensor.
        step: that quantizer's scale (the largest one when per channel); None when float.
        max_abs_diff: ``max |runtime - simulation|``.
        max_step_diff: ``max |diff| / step`` rounded (None when float).
        identical: fraction of elements with the same code (0 steps); for a float tensor, the
            fraction within ``FLOAT_RTOL`` of the tensor's largest magnitude.
        histogram: step difference (clipped to +-HIST_CLIP) -> number of elements.
        float32_identical: fraction of elements on which the float32 fake-quant model agrees
            with the reference (outputs only).  Deep models amplify rounding noise into 1-step
            flips: this says how far the plain float32 evaluation of the same simulation is
            from the reference the runtime was compared with.
        sqnr_db: ``10 log10(sum(simulation^2) / sum((runtime - simulation)^2))``: inf when
            equal, None when the runtime returned NaN / Inf.
    """

    name: str
    quantizer: str | None
    shape: tuple[int, ...]
    step: float | None
    max_abs_diff: float
    max_step_diff: int | None
    identical: float
    histogram: dict[int, int] = field(default_factory=dict)
    float32_identical: float | None = None
    sqnr_db: float | None = None

    def ok(self, max_steps: int = 2, min_identical: float = 0.99) -> bool:
        """Within ``max_steps`` everywhere (quantized tensors) and identical on at least
        ``min_identical`` of the elements."""
        if self.max_step_diff is not None and self.max_step_diff > max_steps:
            return False
        return self.identical >= min_identical - 1e-12


def step_counts(rt: np.ndarray, sim: torch.Tensor, qparams: QParams) -> np.ndarray:
    """int64 step differences of ``rt`` from ``sim`` on ``qparams``' grid (per channel along
    its axis); a non-finite difference is ``int64`` max."""
    rt64 = torch.from_numpy(np.asarray(rt, dtype=np.float64))
    steps = qparams.signed_steps(rt64, sim.detach().cpu().double()).numpy()
    finite = np.isfinite(steps)
    out = np.where(finite, steps, 0).astype(np.int64)
    out[~finite] = _FAR
    return out


def _check_shapes(name: str, rt: np.ndarray, sim: torch.Tensor) -> None:
    if tuple(rt.shape) != tuple(sim.shape):
        raise VerifyError(
            f"{bounded(name)}: runtime shape {tuple(rt.shape)} != simulation shape "
            f"{tuple(sim.shape)}: the file does not compute what the model does; was it "
            "exported from this model (with inputs of this shape)?"
        )


class StepCounter:
    """Step statistics of one tensor accumulated over batches (:meth:`add`, :meth:`result`)."""

    def __init__(self, name: str, qparams: QParams | None, path: str | None) -> None:
        self.name, self.qparams, self.path = name, qparams, path
        self.shape: tuple[int, ...] = ()
        self.n = self.same = 0
        self.max_abs = 0.0
        self.max_steps = 0
        self.hist: Counter[int] = Counter()
        self.signal = self.noise = 0.0

    def add(self, rt: np.ndarray, sim: torch.Tensor) -> None:
        rt = np.asarray(rt, dtype=np.float32)
        _check_shapes(self.name, rt, sim)
        sim_np = sim.detach().cpu().float().numpy()
        diff = rt.astype(np.float64) - sim_np.astype(np.float64)
        self.shape = tuple(rt.shape)
        self.n += diff.size
        self.signal += float(np.square(sim_np.astype(np.float64)).sum())
        self.noise += float(np.square(diff).sum())
        if diff.size:
            self.max_abs = max(self.max_abs, float(np.abs(diff).max()))
        if self.qparams is None:  # float tensor: "identical" up to float32 noise
            tol = FLOAT_RTOL * float(np.abs(sim_np).max()) if sim_np.size else 0.0
            self.same += int((np.abs(diff) <= tol).sum())
            return
        steps = step_counts(rt, sim.float(), self.qparams)
        self.same += int((steps == 0).sum())
        if steps.size:
            self.max_steps = max(self.max_steps, int(np.abs(steps).max()))
        self.hist.update(np.clip(steps, -HIST_CLIP, HIST_CLIP).ravel().tolist())

    def result(self) -> TensorDiff:
        ident = self.same / self.n if self.n else 1.0
        sqnr = self.sqnr_db()
        if self.qparams is None:
            return TensorDiff(self.name, None, self.shape, None, self.max_abs, None, ident, {},
                              sqnr_db=sqnr)
        step = float(self.qparams.scale.double().max())
        return TensorDiff(self.name, self.path, self.shape, step, self.max_abs, self.max_steps,
                          ident, dict(sorted(self.hist.items())), sqnr_db=sqnr)

    def sqnr_db(self) -> float | None:
        if not np.isfinite(self.noise):
            return None
        if self.noise == 0.0:
            return float("inf")
        return 10 * float(np.log10(self.signal / self.noise)) if self.signal > 0 else -np.inf


def tensor_diff(name: str, rt: np.ndarray, sim: torch.Tensor, qparams: QParams | None,
                path: str | None) -> TensorDiff:
    """:class:`TensorDiff` of one runtime tensor against the simulation's (``qparams``: the
    grid it lies on, ``None`` for a float tensor; ``path``: that quantizer's module path)."""
    counter = StepCounter(name, qparams, path)
    counter.add(rt, sim)
    return counter.result()
