"""The benchmark model zoo: small float models trained once, cached, shared by the benchmarks.

``get_trained(name)`` returns ``(model, splits, float_accuracy)``: the :data:`ZOO` entry's
model trained on its data set (or on ``dataset=``), in eval mode.  The first call trains it
(seeded: the same weights on every run on a given machine and torch version) and saves the
state dict to ``bench/.cache/<name>-<dataset>-<hash>.pt``; later calls load it with
``torch.load(weights_only=True)``.  The hash covers everything that changes the weights -- the
entry's fields, the data set, the source of ``bench/models.py``, ``bench/data.py`` and
:func:`train`, :data:`ZOO_VERSION` and the torch version -- so an edit retrains instead of
loading stale weights.

Training: AdamW with a one-cycle learning-rate schedule and label smoothing, seeded data order,
a ``tqdm`` progress bar (``progress=False`` silences it).  The global RNG of the caller is left
untouched (training runs inside ``torch.random.fork_rng``).

Example::

    from bench.zoo import get_trained, evaluate
    model, (train, calib, test), acc = get_trained("residual_cnn")

``python -m bench.zoo`` trains (or loads) the whole zoo and prints accuracy and time per model.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import math
import os
import pathlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from bench.data import DATASETS, Splits, batches
from bench.models import DepthwiseCNN, PlainCNN, ResidualCNN, TinyTransformer

__all__ = [
    "ZooEntry",
    "ZOO",
    "ZOO_VERSION",
    "DEFAULT_CACHE_DIR",
    "TrainResult",
    "build_model",
    "train",
    "get_trained",
    "evaluate",
    "cache_path",
    "default_num_threads",
    "num_threads",
]

ZOO_VERSION = 1
"""Bump to retrain everything for a reason the hashed sources and entries do not show."""

DEFAULT_CACHE_DIR = pathlib.Path(__file__).resolve().parent / ".cache"
"""``bench/.cache`` (ignored by git)."""


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: how to build it and how to train it.

    Attributes:
        model: the model class (or any factory); called as ``model(**shape_kwargs,
            num_classes=..., **kwargs)`` where the shape kwargs come from the data set
            (``in_channels`` for images, ``seq_len`` and ``token_dim`` for sequences).
        dataset: default data set (a key of :data:`bench.data.DATASETS`).
        kind: input kind the model accepts (``"image"`` or ``"sequence"``).
        epochs: passes over the training split.
        lr: peak learning rate of the one-cycle schedule.
        batch_size: training batch size.
        weight_decay: AdamW weight decay.
        label_smoothing: cross-entropy label smoothing.
        seed: seeds the initialisation and the data order (the data sets use their own).
        kwargs: extra constructor arguments (width, depth ...).
    """

    model: Callable[..., nn.Module]
    dataset: str
    kind: str
    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    seed: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self, dataset: str) -> str:
        """A short hash of everything that determines the trained weights."""
        model = getattr(self.model, "__qualname__", repr(self.model))
        parts = [
            f"zoo={ZOO_VERSION}",
            f"torch={torch.__version__.split('+')[0]}",
            f"model={model}",
            f"dataset={dataset}",
            *(
                f"{k}={getattr(self, k)!r}"
                for k in ("epochs", "lr", "batch_size", "weight_decay", "label_smoothing", "seed")
            ),
            f"kwargs={sorted(self.kwargs.items())!r}",
            f"source={_source_digest()}",
        ]
        return hashlib.sha256(";".join(parts).encode()).hexdigest()[:12]


ZOO: dict[str, ZooEntry] = {
    "plain_cnn": ZooEntry(PlainCNN, "digits32", "image", epochs=6, lr=3e-3),
    "residual_cnn": ZooEntry(ResidualCNN, "shapes32", "image", epochs=6, lr=5e-3),
    "depthwise_cnn": ZooEntry(
        DepthwiseCNN, "shapes32", "image", epochs=10, lr=1e-2, kwargs={"width": 32}
    ),
    "tiny_transformer": ZooEntry(
        TinyTransformer, "digits_seq", "sequence", epochs=30, lr=2e-3, weight_decay=0.05
    ),
}
"""The zoo: name -> :class:`ZooEntry`."""


def _source_digest() -> str:
    """Hash of the code that determines trained weights: models, data sets, training loop."""
    h = hashlib.sha256()
    here = pathlib.Path(__file__).resolve().parent
    for f in ("models.py", "data.py"):
        h.update((here / f).read_bytes())
    h.update(_TRAIN_SOURCE.encode())
    return h.hexdigest()[:16]


# -- threads --------------------------------------------------------------------------------------
def default_num_threads() -> int:
    """Intra-op threads for training: 2 (or fewer cores) on an idle machine, 1 when the load
    average already occupies half the cores (extra threads then cost more in contention than
    they gain -- 5-10x slower on a busy 2-core machine)."""
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0] >= cores / 2
    except OSError:  # not available on this platform
        busy = False
    return 1 if busy else min(2, cores)


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)`` (``None``: :func:`default_num_threads`);
    the previous setting is restored afterwards."""
    old = torch.get_num_threads()
    n = default_num_threads() if n is None else n
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(old)


# -- building, training, evaluating ---------------------------------------------------------------
def _entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; choose from {sorted(ZOO)}")
    return ZOO[name]


def build_model(name: str, dataset: str | None = None) -> nn.Module:
    """A freshly initialised (untrained) model of zoo entry ``name`` for ``dataset`` (default:
    the entry's); uses the current global RNG for the initialisation."""
    entry = _entry(name)
    dataset = dataset or entry.dataset
    if dataset not in DATASETS:
        raise KeyError(f"unknown data set {dataset!r}; choose from {sorted(DATASETS)}")
    info = DATASETS[dataset]
    if info.kind != entry.kind:
        fits = sorted(k for k, v in DATASETS.items() if v.kind == entry.kind)
        raise ValueError(
            f"{name} takes {entry.kind} inputs but {dataset} is a {info.kind} data set; "
            f"choose from {fits}"
        )
    if info.kind == "image":
        shape_kwargs: dict[str, int] = {"in_channels": info.input_shape[0]}
    else:
        shape_kwargs = {"seq_len": info.input_shape[0], "token_dim": info.input_shape[1]}
    return entry.model(**shape_kwargs, num_classes=info.num_classes, **entry.kwargs)


def _as_xy(data: TensorDataset | tuple[Tensor, Tensor]) -> TensorDataset:
    return data if isinstance(data, TensorDataset) else TensorDataset(*data)


@torch.no_grad()
def evaluate(
    model: nn.Module, test_data: TensorDataset | tuple[Tensor, Tensor], batch_size: int = 500
) -> float:
    """Top-1 accuracy in percent on ``test_data`` (a TensorDataset or ``(inputs, labels)``),
    batched, without gradients, in eval mode (the model's mode is restored afterwards)."""
    data = _as_xy(test_data)
    was_training = model.training
    model.eval()
    try:
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches(data, batch_size))
    finally:
        model.train(was_training)
    return 100.0 * correct / len(data)


@dataclass
class TrainResult:
    """What :func:`train` did: final training loss, test accuracy (%), seconds, threads."""

    loss: float
    accuracy: float
    seconds: float
    threads: int


def train(
    model: nn.Module,
    entry: ZooEntry,
    splits: Splits,
    *,
    epochs: int | None = None,
    progress: bool = True,
    threads: int | None = None,
    desc: str = "train",
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``splits.train`` with ``entry``'s hyper-parameters (``epochs``
    overrides the entry's), then evaluate on ``splits.test``.  ``augment(x, generator)``
    transforms each training batch (see :attr:`bench.data.DatasetInfo.augment`).  Seeded
    generators fix the data order and the augmentation; the model is left in eval mode."""
    epochs = entry.epochs if epochs is None else epochs
    start = time.perf_counter()
    with num_threads(threads) as n_threads:
        steps = max(1, epochs * math.ceil(len(splits.train) / entry.batch_size))
        opt = torch.optim.AdamW(model.parameters(), lr=entry.lr, weight_decay=entry.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=entry.lr, total_steps=steps, pct_start=0.15
        )
        g = torch.Generator().manual_seed(entry.seed)
        g_aug = torch.Generator().manual_seed(entry.seed + 1)
        loss_avg = float("nan")
        model.train()
        bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
        for _ in bar:
            total, seen = 0.0, 0
            for x, y in batches(splits.train, entry.batch_size, generator=g):
                if augment is not None:
                    x = augment(x, g_aug)
                loss = F.cross_entropy(model(x), y, label_smoothing=entry.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total, seen = total + float(loss.detach()) * len(y), seen + len(y)
            loss_avg = total / seen
            bar.set_postfix(loss=f"{loss_avg:.4f}")
        model.eval()
        acc = evaluate(model, splits.test)
    return TrainResult(loss_avg, acc, time.perf_counter() - start, n_threads)


_TRAIN_SOURCE = inspect.getsource(train)


def cache_path(
    name: str, dataset: str | None = None, cache_dir: str | os.PathLike | None = None
) -> pathlib.Path:
    """Where :func:`get_trained` keeps the weights of ``name`` trained on ``dataset``."""
    entry = _entry(name)
    dataset = dataset or entry.dataset
    root = pathlib.Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    return root / f"{name}-{dataset}-{entry.fingerprint(dataset)}.pt"


def get_trained(
    name: str,
    dataset: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    retrain: bool = False,
    progress: bool = True,
    threads: int | None = None,
) -> tuple[nn.Module, Splits, float]:
    """``(model, splits, float_accuracy)`` for zoo entry ``name`` trained on ``dataset``.

    Args:
        name: a key of :data:`ZOO`.
        dataset: a key of :data:`bench.data.DATASETS` of the entry's input kind (default: the
            entry's data set).
        cache_dir: where trained weights are kept (default :data:`DEFAULT_CACHE_DIR`).
        retrain: train even if cached weights exist (and overwrite them).
        progress: show the training progress bar.
        threads: intra-op threads while training (default :func:`default_num_threads`); the
            caller's setting is restored afterwards.

    Returns the model in eval mode, the data splits and its float test accuracy in percent.
    """
    entry = _entry(name)
    dataset = dataset or entry.dataset
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(entry.seed)
        model = build_model(name, dataset)  # validates the names first
    with num_threads(threads):
        splits = DATASETS[dataset].loader(0)
    path = cache_path(name, dataset, cache_dir)
    if path.exists() and not retrain:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        return model.eval(), splits, float(saved["accuracy"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(entry.seed)  # dropout masks
        result = train(
            model,
            entry,
            splits,
            progress=progress,
            threads=threads,
            desc=f"{name}/{dataset}",
            augment=DATASETS[dataset].augment,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(
        {
            "state_dict": model.state_dict(),
            "accuracy": result.accuracy,
            "loss": result.loss,
            "train_seconds": result.seconds,
            "threads": result.threads,
        },
        tmp,
    )
    tmp.replace(path)  # atomic: concurrent runs never read a half-written file
    return model.eval(), splits, result.accuracy


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.zoo [name ...] [--retrain] [--quiet] [--threads N]``: train (or load)
    zoo models and print their float accuracy and the time each took."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.zoo", description=main.__doc__)
    p.add_argument("names", nargs="*", help=f"subset of {sorted(ZOO)} (default: all)")
    p.add_argument("--retrain", action="store_true", help="ignore cached weights")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for training")
    args = p.parse_args(argv)
    total = time.perf_counter()
    print(f"{'model':<18} {'dataset':<11} {'accuracy (%)':>12} {'time (s)':>9}")
    for name in args.names or list(ZOO):
        t = time.perf_counter()
        _, _, acc = get_trained(
            name, retrain=args.retrain, progress=not args.quiet, threads=args.threads
        )
        print(f"{name:<18} {ZOO[name].dataset:<11} {acc:>12.2f} {time.perf_counter() - t:>9.1f}")
    print(f"total {time.perf_counter() - total:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
