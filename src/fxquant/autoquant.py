"""AutoQuant: chain the PTQ recovery techniques until an accuracy budget is met.

Follows AIMET's AutoQuant order (``shared/REFERENCE.md``): measure the float accuracy, then

1. **quant scheme** -- calibrate the activations with min-max, MSE and percentile observers and
   keep the best (weights: per-channel / per-tensor min-max as the backend profile says);
2. **W32 check** -- activations quantized, weights float: a diagnosis only (never kept).  If
   this already misses the budget, activation quantization is the bottleneck and the weight
   techniques below cannot close the gap alone (they still run: they recover what they can);
3. **BN fold** -- :func:`fxquant.prepare` folds conv + BatchNorm into one quantized layer
   already, so every model of the previous steps is folded; the step only reports the pairs;
4. **CLE** -- :func:`fxquant.equalize` on the float model, re-prepared and calibrated with the
   chosen scheme; kept if it beats the best model so far;
5. **bias correction** on a copy of the best model;
6. **AdaRound** on a copy of the best model *before* bias correction (AdaRound learns the
   rounding against the float outputs, which makes the empirical bias shift moot);
7. **block reconstruction** (BRECQ + QDrop, :func:`fxquant.algorithms.reconstruct.reconstruct`)
   on a copy of the same model, if the budget is still missed.

AutoQuant stops as soon as the best accuracy reaches ``float accuracy - allowed drop``.  Every
step works on copies: the best model found so far is never modified, and the returned model is
the most accurate one seen (ties: the earlier, simpler one).  The report
(:attr:`AutoQuant.report`, printable) lists every step with its accuracy, seconds and whether it
was kept.  AutoQuant sits above the algorithms and the exporters (it writes the encodings).

Example::

    auto = AutoQuant(model, example, calib_batches, lambda m: evaluate(m, test))
    qmodel, accuracy, encodings = auto.optimize(allowed_accuracy_drop=1.0)
    print(auto.report)
"""

from __future__ import annotations

import copy
import itertools
import os
import pathlib
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .algorithms import (
    Relu6Policy,
    adaround,
    bias_correction,
    calibrate,
    equalize,
    fold_bn,
    get_bn_fold_report,
    get_cle_report,
    reconstruct,
)
from .backends import get_profile
from .errors import DataError
from .export import export_encodings
from .graph import prepare
from .numerics import QDType, qint8
from .observers import MinMaxObserver, MSEObserver, PercentileObserver
from .qconfig import get_qconfig

__all__ = ["AutoQuant", "AutoQuantReport", "AutoQuantStep", "ACTIVATION_SCHEMES"]

ACTIVATION_SCHEMES: dict[str, Any] = {
    "min-max": MinMaxObserver,
    "mse": MSEObserver,
    "percentile": PercentileObserver,
}
"""Activation observers tried by the quant-scheme step, in order (ties keep the earlier)."""

ENCODINGS_FILE = "autoquant.encodings"


@dataclass
class AutoQuantStep:
    """One evaluated (or skipped) step.

    Attributes:
        name: the step (``quant scheme: mse``, ``CLE``, ``AdaRound`` ...).
        accuracy: eval_fn's value of the step's model, ``None`` when nothing was evaluated.
        seconds: wall time of the step, evaluation included.
        kept: the step's model became the best model.
        detail: what happened (pairs folded, why skipped, a diagnosis ...).
    """

    name: str
    accuracy: float | None
    seconds: float
    kept: bool
    detail: str = ""


@dataclass
class AutoQuantReport:
    """Everything :meth:`AutoQuant.optimize` did; ``print(report)`` gives a table."""

    float_accuracy: float = float("nan")
    allowed_drop: float = float("nan")
    steps: list[AutoQuantStep] = field(default_factory=list)
    best_step: str = ""
    best_accuracy: float = float("nan")
    encodings_path: str | None = None
    seconds: float = 0.0

    @property
    def target(self) -> float:
        """The accuracy to reach: float accuracy minus the allowed drop."""
        return self.float_accuracy - self.allowed_drop

    @property
    def met(self) -> bool:
        """Whether the best model reaches :attr:`target`."""
        return self.best_accuracy >= self.target

    def __str__(self) -> str:
        head = ("step", "accuracy", "seconds", "kept", "detail")
        rows = [
            (s.name, "-" if s.accuracy is None else f"{s.accuracy:.4g}", f"{s.seconds:.1f}",
             "yes" if s.kept else "no", s.detail)
            for s in self.steps
        ]
        widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [
            f"AutoQuant: float {self.float_accuracy:.4g}, target {self.target:.4g} "
            f"(allowed drop {self.allowed_drop:g}); best {self.best_accuracy:.4g} from "
            f"{self.best_step!r} -> target {'MET' if self.met else 'MISSED'} "
            f"({self.seconds:.1f} s)",
            fmt.format(*head).rstrip(),
            fmt.format(*("-" * w for w in widths)).rstrip(),
        ]
        lines += [fmt.format(*r).rstrip() for r in rows]
        if self.encodings_path:
            lines.append(f"encodings: {self.encodings_path}")
        return "\n".join(lines)


@dataclass
class _Candidate:
    """A quantized model with the float model it was prepared from."""

    step: str
    accuracy: float
    qmodel: nn.Module
    float_model: nn.Module


class AutoQuant:
    """Automatic PTQ: the recovery techniques in AIMET's order until an accuracy budget is met.

    Args:
        model: the trained float model (never modified).
        example_inputs: example inputs for :func:`fxquant.prepare`.
        data_loader: calibration batches (tensors or ``(inputs, labels)`` tuples); the first
            ``num_calibration_batches`` are read once and reused by every step.
        eval_fn: ``eval_fn(model) -> float``, higher is better (e.g. accuracy in percent).
        weight_dtype / act_dtype: quantized dtypes of weights / activations.
        backend: a backend profile name (symmetry and per-channel weights come from it).
        num_calibration_batches: how many batches to read (``None``: all).
        adaround_iterations: AdaRound steps per layer (``None``: 10000, 15000 below 8 bits).
        reconstruct_iterations: block reconstruction steps per block (``None``: as
            ``adaround_iterations`` when that is given, else reconstruct's default, 2000).
        results_dir: where the encodings go (``None``: a new temporary directory).
        progress: progress bars (``False`` silences them all).
        seed: seeds every step (same seed, same result).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        data_loader: Iterable[Any],
        eval_fn: Callable[[nn.Module], float],
        *,
        weight_dtype: QDType = qint8,
        act_dtype: QDType = qint8,
        backend: str = "generic",
        num_calibration_batches: int | None = 16,
        adaround_iterations: int | None = None,
        reconstruct_iterations: int | None = None,
        results_dir: str | os.PathLike | None = None,
        progress: bool = True,
        seed: int = 0,
    ) -> None:
        self.model = copy.deepcopy(model).eval()
        self.example_inputs = example_inputs
        data = iter(data_loader)
        if num_calibration_batches is not None:
            data = itertools.islice(data, num_calibration_batches)
        self.calibration_data = list(data)
        if not self.calibration_data:
            raise DataError("AutoQuant: data_loader yielded no batch")
        self.eval_fn = eval_fn
        self.weight_dtype = weight_dtype
        self.act_dtype = act_dtype
        self.backend = backend
        self.profile = get_profile(backend)
        self.adaround_iterations = adaround_iterations
        self.reconstruct_iterations = (
            adaround_iterations if reconstruct_iterations is None else reconstruct_iterations
        )  # None (both): each algorithm's own default
        self.results_dir = results_dir
        self.progress = progress
        self.seed = seed
        self.report = AutoQuantReport()
        self.scheme: str | None = None
        self.best_float_model: nn.Module | None = None
        """The float model the returned quantized model was prepared from (CLE'd if CLE won):
        prepare it again to load the exported encodings into a fresh model."""

    # -- building blocks ---------------------------------------------------------------------
    def qconfig(self, scheme: str | None = None, weights: bool = True):
        """The QConfig of activation observer ``scheme`` (default: the chosen one)."""
        return get_qconfig(
            observer=ACTIVATION_SCHEMES[scheme or self.scheme or "min-max"],
            weight_dtype=self.weight_dtype if weights else None,
            out_dtype=self.act_dtype,
            symmetric=self.profile.activation_symmetric,
            weight_symmetric=self.profile.weight_symmetric,
            weight_per_channel=self.profile.weight_per_channel,
            scale_math=self.profile.scale_math,
        )

    def quantize(self, float_model: nn.Module, scheme: str | None = None,
                 weights: bool = True) -> nn.Module:
        """``float_model`` prepared with :meth:`qconfig` and calibrated (a new module)."""
        qmodel = prepare(float_model, self.example_inputs, self.qconfig(scheme, weights),
                         backend=self.backend)
        return calibrate(qmodel, self.calibration_data, progress=False).eval()

    def _evaluate(self, model: nn.Module) -> float:
        return float(self.eval_fn(model.eval()))

    # -- the search --------------------------------------------------------------------------
    def optimize(self, allowed_accuracy_drop: float) -> tuple[nn.Module, float, str | None]:
        """Run the steps until ``eval_fn >= float accuracy - allowed_accuracy_drop``.

        Returns ``(best quantized model, its accuracy, encodings path)``; the encodings (AIMET
        0.6.1 JSON of the best model) are written to ``results_dir``.  The path is ``None``,
        with a warning, when the model's encodings cannot be exported.
        """
        t_all = time.perf_counter()
        self.report = report = AutoQuantReport(allowed_drop=float(allowed_accuracy_drop))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            report.float_accuracy = self._evaluate(copy.deepcopy(self.model))
            steps = [self._scheme_step, self._w32_step, self._bn_fold_step, self._cle_step,
                     self._bias_correction_step, self._adaround_step, self._reconstruct_step]
            self._best: _Candidate | None = None
            self._base: _Candidate | None = None  # best model without bias correction
            bar = tqdm(steps, desc="AutoQuant", disable=not self.progress, leave=False)
            for step in bar:
                torch.manual_seed(self.seed)
                step()
                if self._best is not None:
                    bar.set_postfix(best=f"{self._best.accuracy:.4g}")
                    if self._best.accuracy >= report.target:
                        break
        best = self._best
        assert best is not None
        report.best_step, report.best_accuracy = best.step, best.accuracy
        self.best_float_model = best.float_model
        report.encodings_path = self._export(best.qmodel)
        report.seconds = time.perf_counter() - t_all
        return best.qmodel, best.accuracy, report.encodings_path

    def _record(self, name: str, t0: float, accuracy: float | None, kept: bool,
                detail: str = "") -> None:
        self.report.steps.append(
            AutoQuantStep(name, accuracy, time.perf_counter() - t0, kept, detail)
        )

    def _offer(self, cand: _Candidate, base: bool) -> bool:
        """Make ``cand`` the best (and the base for AdaRound) if it beats the current best."""
        if self._best is not None and cand.accuracy <= self._best.accuracy:
            return False
        self._best = cand
        if base:
            self._base = cand
        return True

    def _scheme_step(self) -> None:
        cands = []
        for name in ACTIVATION_SCHEMES:
            t0 = time.perf_counter()
            qmodel = self.quantize(self.model, name)
            acc = self._evaluate(qmodel)
            cands.append((acc, name, qmodel, time.perf_counter() - t0))
        best_acc = max(c[0] for c in cands)
        chosen = next(c for c in cands if c[0] == best_acc)  # earliest of the best
        self.scheme = chosen[1]
        for acc, name, qmodel, seconds in cands:
            kept = name == self.scheme
            if kept:
                self._offer(_Candidate(f"quant scheme: {name}", acc, qmodel, self.model), True)
            self.report.steps.append(AutoQuantStep(
                f"quant scheme: {name}", acc, seconds, kept,
                "activation observer; chosen" if kept else "activation observer"))

    def _w32_step(self) -> None:
        t0 = time.perf_counter()
        acc = self._evaluate(self.quantize(self.model, weights=False))
        if acc < self.report.target:
            detail = ("diagnosis: activations alone miss the target; weight techniques "
                      "cannot close the whole gap")
        else:
            detail = (f"diagnosis: weight quantization costs "
                      f"{acc - self._best.accuracy:.3g}")  # type: ignore[union-attr]
        self._record("W32 check (weights float)", t0, acc, False, detail)

    def _bn_fold_step(self) -> None:

        t0 = time.perf_counter()
        folded = get_bn_fold_report(fold_bn(self.model))
        self._record("BN fold", t0, None, True,
                     f"done by prepare: {len(folded.folded)} conv+BN pair(s) folded in every "
                     "model above")

    def _cle_step(self) -> None:
        """CLE keeping ReLU6 (function preserved); where ReLU6 blocked chains, also CLE with
        ReLU6 replaced by ReLU (the paper's MobileNet recipe) -- each kept only if it helps."""

        for policy in (Relu6Policy.SKIP, Relu6Policy.REPLACE):
            t0 = time.perf_counter()
            eq = equalize(self.model, relu6=policy, progress=self.progress)
            cle = get_cle_report(eq)
            n_pairs = len(cle.pairs) if cle is not None else 0
            n_abs = sum(cle.absorbed.values()) if cle is not None else 0
            name = "CLE" if policy is Relu6Policy.SKIP else "CLE (ReLU6 -> ReLU)"
            if policy is Relu6Policy.REPLACE and (cle is None or not cle.replaced_relu6):
                return  # nothing to replace: the same model as above
            if n_pairs == 0 and n_abs == 0:
                self._record(name, t0, None, False, "skipped: no layer pair to equalize")
                continue
            qmodel = self.quantize(eq)
            acc = self._evaluate(qmodel)
            kept = self._offer(_Candidate(name, acc, qmodel, eq), True)
            extra = (f", {len(cle.replaced_relu6)} ReLU6 replaced"
                     if policy is Relu6Policy.REPLACE else "")
            self._record(name, t0, acc, kept,
                         f"{n_pairs} pair(s) equalized, {n_abs} bias channel(s) absorbed{extra}")
            if self._best is not None and self._best.accuracy >= self.report.target:
                return

    def _bias_correction_step(self) -> None:

        t0 = time.perf_counter()
        base = self._best
        assert base is not None
        qmodel = bias_correction(copy.deepcopy(base.qmodel), self.calibration_data,
                                 progress=self.progress)
        acc = self._evaluate(qmodel)
        kept = self._offer(_Candidate("bias correction", acc, qmodel, base.float_model), False)
        self._record("bias correction", t0, acc, kept, f"on {base.step!r}")

    def _learned_rounding(self, name: str, run: Callable[[nn.Module], nn.Module],
                          error: str | None) -> None:
        t0 = time.perf_counter()
        if error is not None:
            self._record(name, t0, None, False, f"skipped: {error}")
            return
        base = self._base
        assert base is not None
        qmodel = run(copy.deepcopy(base.qmodel))
        acc = self._evaluate(qmodel)
        kept = self._offer(_Candidate(name, acc, qmodel, base.float_model), False)
        rep = getattr(qmodel, "reconstruction_report", None)
        units = f", {len(rep.results)} unit(s)" if rep is not None else ""
        self._record(name, t0, acc, kept, f"on {base.step!r}{units}")

    def _adaround_step(self) -> None:
        self._learned_rounding(
            "AdaRound",
            lambda m: adaround(m, self.calibration_data, num_iterations=self.adaround_iterations,
                               progress=self.progress, seed=self.seed),
            None,
        )

    def _reconstruct_step(self) -> None:
        self._learned_rounding(
            "block reconstruction",
            lambda m: reconstruct(m, self.calibration_data,
                                  num_iterations=self.reconstruct_iterations,
                                  progress=self.progress, seed=self.seed),
            None,
        )

    def _export(self, qmodel: nn.Module) -> str | None:
        root = self.results_dir
        if root is None:
            root = tempfile.mkdtemp(prefix="fxquant-autoquant-")
        path = pathlib.Path(root) / ENCODINGS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            export_encodings(qmodel, path)
        except Exception as err:  # the model is still the result; say why there is no file
            warnings.warn(f"AutoQuant: could not export encodings: {err}", stacklevel=3)
            return None
        return str(path)
