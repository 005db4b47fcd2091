"""End-to-end demo: float training, W8A8 post-training quantization and W8A8 QAT on digits.

The data set is scikit-learn's bundled ``load_digits`` (1797 grey 8x8 images, no download).
``run_demo`` trains :class:`DigitsNet` -- a plain ``nn.Module`` with ``F.relu``, a residual
``+`` and BatchNorm, written without any quantization rewrite -- then:

1. PTQ: ``prepare`` a copy with :data:`~fxquant.default_calibration_qconfig_setter` (MSE
   histogram activation ranges), ``calibrate`` on a few hundred training images, evaluate;
2. QAT: ``prepare`` a fresh copy with :data:`~fxquant.default_qat_qconfig_setter`, calibrate,
   fine-tune a few epochs at a small learning rate (model in train mode, quantizers in
   ``FakeQuantState.QAT``), evaluate in eval mode with the scales frozen (``VALIDATION``).

Everything is deterministic for a given ``seed``: the global torch RNG is forked (the caller's
state is restored afterwards), and the split, data order and calibration subset come from seeded
generators.  Run it with ``fxquant demo`` or ``python -m fxquant.demo``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .algorithms import calibrate
from .debug.size import float_size_bytes, quantized_size_bytes
from .errors import require
from .fake_quant import FakeQuantState, set_fake_quantize
from .graph import prepare
from .qconfig import default_calibration_qconfig_setter, default_qat_qconfig_setter

__all__ = [
    "DigitsNet",
    "DemoResult",
    "StageResult",
    "load_digits_split",
    "float_size_bytes",
    "quantized_size_bytes",
    "run_demo",
]

TEST_FRACTION = 0.25
"""Share of the 1797 digits held out for testing (stratified; 450 images, 0.22 points each)."""
BATCH_SIZE = 32
FLOAT_LR = 3e-3
QAT_LR = 1e-4
CALIBRATION_IMAGES = 512
"""Training images (the first ones of a seeded shuffle) seen by ``calibrate``."""
NUM_THREADS = 1
"""Intra-op threads while the demo runs.  Its batches are tiny (32 x 1 x 8 x 8): a second
thread saves little on an idle machine and costs 10x in synchronisation on a busy one."""


class DigitsNet(nn.Module):
    """A small CNN for 1x8x8 inputs: conv-bn-relu, a residual conv-bn block, pool, conv, head."""

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(x + self.bn2(self.conv2(x)))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


# -- data -------------------------------------------------------------------------------------
def load_digits_split(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)``: digits as ``[N, 1, 8, 8]`` float32, normalised
    with the training split's mean / std; a stratified split fixed by ``seed``."""
    purpose = "the demo's digits data set (scikit-learn's load_digits)"
    datasets = require("sklearn.datasets", "demo", purpose)
    model_selection = require("sklearn.model_selection", "demo", purpose)
    digits = datasets.load_digits()
    x_tr, x_te, y_tr, y_te = model_selection.train_test_split(
        digits.images, digits.target, test_size=TEST_FRACTION,
        random_state=seed, stratify=digits.target,
    )
    x_tr = torch.as_tensor(x_tr, dtype=torch.float32).unsqueeze(1)
    x_te = torch.as_tensor(x_te, dtype=torch.float32).unsqueeze(1)
    mean, std = x_tr.mean(), x_tr.std()
    return (
        (x_tr - mean) / std, torch.as_tensor(y_tr, dtype=torch.long),
        (x_te - mean) / std, torch.as_tensor(y_te, dtype=torch.long),
    )


def _batches(
    x: Tensor, y: Tensor, generator: torch.Generator | None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches in a seeded random order (``generator``) or in order (``None``)."""
    n = x.shape[0]
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for i in range(0, n, BATCH_SIZE):
        idx = order[i : i + BATCH_SIZE]
        yield x[idx], y[idx]


# -- training and evaluation ------------------------------------------------------------------
def _train(
    model: nn.Module, x: Tensor, y: Tensor, epochs: int, lr: float, generator: torch.Generator,
    desc: str, progress: bool,
) -> None:
    """Adam with a cosine learning-rate decay to zero over ``epochs``; ``model.train()``."""
    if epochs <= 0:
        return
    steps = epochs * math.ceil(x.shape[0] / BATCH_SIZE)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        total, seen = 0.0, 0
        for xb, yb in _batches(x, y, generator):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            total, seen = total + float(loss.detach()) * len(yb), seen + len(yb)
        bar.set_postfix(loss=f"{total / seen:.4f}")


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy in percent, in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in _batches(x, y, None))
    model.train(was_training)
    return 100.0 * correct / x.shape[0]


# -- result -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageResult:
    """One row of the demo table: test accuracy (%), model size (KiB), wall time (s)."""

    stage: str
    accuracy: float
    size_kib: float
    seconds: float


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` measured; ``str()`` is the printed table.

    Accuracies are top-1 on the held-out test split in percent; sizes in KiB (see
    :func:`float_size_bytes` / :func:`quantized_size_bytes`); seconds are each stage's wall
    time (float: training; PTQ: prepare + calibrate; QAT: prepare + calibrate + fine-tuning).
    ``epochs`` / ``qat_epochs`` / ``seed`` are the arguments of the run.
    """

    float_accuracy: float
    ptq_accuracy: float
    qat_accuracy: float
    float_size_kib: float
    quantized_size_kib: float
    float_seconds: float
    ptq_seconds: float
    qat_seconds: float
    num_train: int
    num_test: int
    epochs: int
    qat_epochs: int
    seed: int

    @property
    def size_ratio(self) -> float:
        """Float size divided by quantized size."""
        return self.float_size_kib / self.quantized_size_kib

    @property
    def stages(self) -> tuple[StageResult, ...]:
        """The table rows: float, PTQ W8A8, QAT W8A8."""
        return (
            StageResult("float", self.float_accuracy, self.float_size_kib, self.float_seconds),
            StageResult("PTQ W8A8", self.ptq_accuracy, self.quantized_size_kib, self.ptq_seconds),
            StageResult("QAT W8A8", self.qat_accuracy, self.quantized_size_kib, self.qat_seconds),
        )

    def table(self) -> str:
        head = ("stage", "accuracy (%)", "size (KiB)", "time (s)")
        rows = [head] + [
            (s.stage, f"{s.accuracy:.2f}", f"{s.size_kib:.1f}", f"{s.seconds:.1f}")
            for s in self.stages
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = []
        for i, r in enumerate(rows):
            cells = [r[0].ljust(widths[0])]
            cells += [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
            lines.append(" | ".join(cells))
            if i == 0:
                lines.append("-+-".join("-" * w for w in widths))
        lines.append(f"size ratio float / W8A8: {self.size_ratio:.2f}x")
        lines.append(
            f"digits: {self.num_train} train / {self.num_test} test images; "
            f"{self.epochs} float + {self.qat_epochs} QAT epochs; seed {self.seed}"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# -- the demo ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _demo_environment(seed: int) -> Iterator[None]:
    """Seed a fork of torch's global RNG and use :data:`NUM_THREADS`; both restored after."""
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(NUM_THREADS)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def run_demo(
    epochs: int = 20, qat_epochs: int = 2, seed: int = 0, progress: bool = True
) -> DemoResult:
    """Train a float :class:`DigitsNet`, quantize it W8A8 with PTQ and with QAT, measure all.

    Args:
        epochs: float training epochs.
        qat_epochs: QAT fine-tuning epochs (0: calibration only).
        seed: fixes the split, initialisation, data order and so every number but the times.
        progress: tqdm progress bars (``False`` silences them).
    """
    with _demo_environment(seed):
        x_tr, y_tr, x_te, y_te = load_digits_split(seed)
        example = x_tr[:BATCH_SIZE]
        # one generator per use, so changing the epochs leaves the calibration set alone
        float_order, calib_order, qat_order = (
            torch.Generator().manual_seed(seed + i) for i in (1, 2, 3)
        )
        calib_idx = torch.randperm(x_tr.shape[0], generator=calib_order)[:CALIBRATION_IMAGES]
        calib = list(_batches(x_tr[calib_idx], y_tr[calib_idx], None))

        t0 = time.perf_counter()
        model = DigitsNet()
        _train(model, x_tr, y_tr, epochs, FLOAT_LR, float_order, "float", progress)
        model.eval()
        float_seconds = time.perf_counter() - t0
        float_acc = _accuracy(model, x_te, y_te)

        t0 = time.perf_counter()
        ptq = prepare(model, example, qconfig_setter=default_calibration_qconfig_setter)
        calibrate(ptq, calib, progress=progress)
        ptq_seconds = time.perf_counter() - t0
        ptq_acc = _accuracy(ptq, x_te, y_te)

        t0 = time.perf_counter()
        qat = prepare(model, example, qconfig_setter=default_qat_qconfig_setter)
        calibrate(qat, calib, progress=progress)
        set_fake_quantize(qat, FakeQuantState.QAT)
        _train(qat, x_tr, y_tr, qat_epochs, QAT_LR, qat_order, "QAT", progress)
        qat.eval()
        set_fake_quantize(qat, FakeQuantState.VALIDATION)
        qat_seconds = time.perf_counter() - t0
        qat_acc = _accuracy(qat, x_te, y_te)

    return DemoResult(
        float_accuracy=float_acc,
        ptq_accuracy=ptq_acc,
        qat_accuracy=qat_acc,
        float_size_kib=float_size_bytes(model) / 1024,
        quantized_size_kib=quantized_size_bytes(ptq) / 1024,
        float_seconds=float_seconds,
        ptq_seconds=ptq_seconds,
        qat_seconds=qat_seconds,
        num_train=x_tr.shape[0],
        num_test=x_te.shape[0],
        epochs=epochs,
        qat_epochs=qat_epochs,
        seed=seed,
    )


# -- command line -----------------------------------------------------------------------------
# ``python -m fxquant.demo [--epochs N] [--qat-epochs N] [--seed S] [--quiet]`` is the CLI's
# ``fxquant demo`` (its options are defined once, in fxquant.cli.main).  The CLI sits above the
# demo, so only the entry point imports it, when this file runs as __main__, never on import.
if __name__ == "__main__":
    from fxquant.cli.main import run_command

    raise SystemExit(run_command("demo", prog="python -m fxquant.demo"))
