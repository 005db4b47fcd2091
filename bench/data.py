"""Deterministic benchmark data sets, generated in code (no downloads).

Every loader returns :class:`Splits` ``(train, calib, test)`` of ``TensorDataset(x, y)`` with
float32 inputs and int64 labels.  The same ``seed`` gives the same tensors: bit-identical on a
given machine and torch version whatever the thread count (seeded ``torch.Generator`` draws,
statistics summed in float64).

* :func:`digits32` -- scikit-learn's bundled 8x8 digits, resampled bilinearly to 3x32x32 with a
  random sub-pixel shift and a slight random zoom per image (a few shifted copies of every
  training image), normalised.
* :func:`shapes32` -- a procedural 10-class task at 3x32x32: shapes and textures with random
  colour, position, size and rotation on a coloured gradient background, plus pixel noise and
  a distractor blob.  Harder than digits (float accuracy 93-95 % for the zoo's CNNs), with a
  measurable quantization loss.
* :func:`digits_seq` -- the 8x8 digits as a sequence of 8 row tokens of 8 pixels each
  (``[N, 8, 8]``) for the transformer, with shifted copies of the training images.

:data:`DATASETS` lists them with their input shape and kind (``image`` / ``sequence``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = [
    "Splits",
    "DatasetInfo",
    "DATASETS",
    "load",
    "digits32",
    "shapes32",
    "digits_seq",
    "batches",
    "dihedral",
    "SHAPE_CLASSES",
]


class Splits(NamedTuple):
    """``(train, calib, test)`` TensorDatasets of ``(inputs, labels)``.

    ``calib`` is the PTQ calibration set: images from the training distribution that the
    benchmarks feed to ``fxquant.calibrate`` (never the test images).
    """

    train: TensorDataset
    calib: TensorDataset
    test: TensorDataset


@dataclass(frozen=True)
class DatasetInfo:
    """A data set of the zoo: its loader and what models need to know about its inputs.

    Attributes:
        name: key in :data:`DATASETS`.
        loader: ``loader(seed) -> Splits``.
        kind: ``"image"`` (inputs ``[N, C, H, W]``) or ``"sequence"`` (``[N, T, F]``).
        input_shape: one sample's input shape.
        num_classes: number of labels (``0 .. num_classes - 1``).
        augment: label-preserving random transform of a training batch,
            ``augment(x, generator) -> x`` (applied by the zoo's training loop), or ``None``.
    """

    name: str
    loader: Callable[[int], Splits]
    kind: str
    input_shape: tuple[int, ...]
    num_classes: int
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None


# -- helpers --------------------------------------------------------------------------------------
def batches(
    data: TensorDataset, batch_size: int = 256, generator: torch.Generator | None = None
) -> Iterator[tuple[Tensor, ...]]:
    """Mini-batches of a TensorDataset by slicing its tensors (much faster than a DataLoader
    on small in-memory data): in order, or in a random order drawn from ``generator``."""
    tensors = data.tensors
    n = tensors[0].shape[0]
    if generator is None:
        for i in range(0, n, batch_size):
            yield tuple(t[i : i + batch_size] for t in tensors)
    else:
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield tuple(t[idx] for t in tensors)


def dihedral(x: Tensor, generator: torch.Generator) -> Tensor:
    """Each image ``[N, C, H, W]`` (H == W) under a random one of the 8 symmetries of the
    square (flips and transposes), drawn from ``generator``."""
    n = x.shape[0]
    r = torch.rand(n, 3, generator=generator) < 0.5
    x = torch.where(r[:, 0, None, None, None], x.flip(-1), x)
    x = torch.where(r[:, 1, None, None, None], x.flip(-2), x)
    return torch.where(r[:, 2, None, None, None], x.transpose(-1, -2), x)


def _stratified_split(
    labels: Tensor, test_per_class: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Indices ``(rest, test)``: ``test_per_class`` random indices of each class go to test."""
    rest, test = [], []
    for c in range(int(labels.max()) + 1):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        test.append(idx[:test_per_class])
        rest.append(idx[test_per_class:])
    return torch.cat(rest).sort().values, torch.cat(test).sort().values


def _mean_std(x: Tensor) -> tuple[float, float]:
    """Mean and standard deviation of all of ``x``, summed in float64 (so the float32 result
    does not depend on the number of threads)."""
    x = x.double()
    return float(x.mean()), float(x.std())


def _digits_8x8() -> tuple[Tensor, Tensor]:
    """scikit-learn's digits: ``[1797, 8, 8]`` float32 in ``[0, 1]`` and int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the benchmark data needs scikit-learn (bundled digits): pip install scikit-learn"
        ) from err
    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32) / 16.0
    return x, torch.as_tensor(d.target, dtype=torch.long)


DIGITS_TEST_PER_CLASS = 45
"""450 of the 1797 digits (45 per class) are test images; the other 1347 are for training."""
DIGITS_CALIB = 256
"""Calibration images: the first 256 training digits of a seeded shuffle (own random shifts)."""


def _digits_parts(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Images and labels of the train / calib / test parts of the digits, and a generator."""
    g = torch.Generator().manual_seed(seed)
    x, y = _digits_8x8()
    tr, te = _stratified_split(y, DIGITS_TEST_PER_CLASS, g)
    cal = tr[torch.randperm(len(tr), generator=g)[:DIGITS_CALIB]].sort().values
    return x[tr], y[tr], x[cal], y[cal], x[te], y[te], g  # type: ignore[return-value]


def _resample(
    img: Tensor, size: int, generator: torch.Generator, max_shift: float, zoom: float
) -> Tensor:
    """``[N, H, W]`` -> ``[N, size, size]``: bilinear resampling with a random shift of up to
    ``max_shift`` output pixels and a random zoom in ``[1 - zoom, 1 + zoom]`` per image."""
    n = img.shape[0]
    u = torch.rand(n, 3, generator=generator) * 2 - 1
    scale = 1.0 + zoom * u[:, 0]  # > 1 shrinks the digit
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = u[:, 1:] * (2.0 * max_shift / size)
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    return F.grid_sample(
        img.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    ).squeeze(1)


DIGITS32_TRAIN_COPIES = 3
"""Randomly shifted / zoomed copies of each training digit in the ``digits32`` train split."""


def digits32(seed: int = 0) -> Splits:
    """Digits as ``[N, 3, 32, 32]`` images (grey repeated to 3 channels), normalised with the
    training split's mean / std; labels 0-9.

    Sizes: train 1347 x 3 = 4041 (shifted copies), calib 256, test 450.  Every image, test
    included, is resampled with a random shift of up to 3 px and a zoom of up to +-10 %, so a
    model must be shift-tolerant (float accuracy ~98-99 % rather than ~100 %).
    """
    x_tr, y_tr, x_cal, y_cal, x_te, y_te, g = _digits_parts(seed)
    size, shift, zoom = 32, 3.0, 0.1
    x_tr = torch.cat([_resample(x_tr, size, g, shift, zoom) for _ in range(DIGITS32_TRAIN_COPIES)])
    y_tr = y_tr.repeat(DIGITS32_TRAIN_COPIES)
    x_cal = _resample(x_cal, size, g, shift, zoom)
    x_te = _resample(x_te, size, g, shift, zoom)
    mean, std = _mean_std(x_tr)

    def norm(t: Tensor) -> Tensor:
        return ((t - mean) / std).unsqueeze(1).repeat(1, 3, 1, 1).contiguous()

    return Splits(
        TensorDataset(norm(x_tr), y_tr),
        TensorDataset(norm(x_cal), y_cal),
        TensorDataset(norm(x_te), y_te),
    )


DIGITS_SEQ_TRAIN_COPIES = 3
"""The ``digits_seq`` train split: the training digits plus 2 copies shifted by 1 px."""


def _shift_8x8(img: Tensor, generator: torch.Generator) -> Tensor:
    """Shift each ``[8, 8]`` image by -1, 0 or +1 pixel in each direction (zeros come in)."""
    n = img.shape[0]
    d = torch.randint(-1, 2, (n, 2), generator=generator)
    padded = F.pad(img, (1, 1, 1, 1))
    out = torch.empty_like(img)
    for i in range(n):  # 1347 tiny copies: fast enough, and obviously correct
        dy, dx = int(d[i, 0]), int(d[i, 1])
        out[i] = padded[i, 1 - dy : 9 - dy, 1 - dx : 9 - dx]
    return out


def digits_seq(seed: int = 0) -> Splits:
    """Digits as sequences ``[N, 8, 8]``: 8 row tokens of 8 pixels, normalised per pixel
    position with the training split's statistics; labels 0-9.

    Sizes: train 1347 x 3 = 4041 (the originals + 2 copies shifted by up to 1 px), calib 256,
    test 450 (unshifted, the same images as :func:`digits32`'s test split for a given seed).
    """
    x_tr, y_tr, x_cal, y_cal, x_te, y_te, g = _digits_parts(seed)
    copies = [x_tr] + [_shift_8x8(x_tr, g) for _ in range(DIGITS_SEQ_TRAIN_COPIES - 1)]
    x_tr = torch.cat(copies)
    y_tr = y_tr.repeat(DIGITS_SEQ_TRAIN_COPIES)
    mean, std = _mean_std(x_tr)

    def norm(t: Tensor) -> Tensor:
        return ((t - mean) / std).contiguous()

    return Splits(
        TensorDataset(norm(x_tr), y_tr),
        TensorDataset(norm(x_cal), y_cal),
        TensorDataset(norm(x_te), y_te),
    )


# -- shapes32: the procedural task ----------------------------------------------------------------
SHAPE_CLASSES = (
    "disk",
    "ring",
    "square",
    "hollow_square",
    "triangle",
    "plus",
    "bar",
    "stripes",
    "checker",
    "two_dots",
)
"""Class names of :func:`shapes32`, in label order."""

SHAPES_SIZES = (8000, 512, 2000)
"""Train / calib / test images of :func:`shapes32`."""


def _box(u: Tensor, v: Tensor, a: float, b: float) -> Tensor:
    """Signed distance (approximate outside the corners) to an axis-aligned box of half
    sizes ``a``, ``b``."""
    return torch.maximum(u.abs() - a, v.abs() - b)


def _sdf(label: int, u: Tensor, v: Tensor, phase: Tensor) -> Tensor:
    """Signed distance in shape units (radius 1) to class ``label``'s shape; negative inside.

    ``u, v``: local coordinates ``[n, H, W]`` (rotated, scaled); ``phase`` ``[n, 1, 1]`` for
    the textures.
    """
    r = torch.sqrt(u * u + v * v)
    name = SHAPE_CLASSES[label]
    if name == "disk":
        return r - 0.9
    if name == "ring":
        return (r - 0.72).abs() - 0.28
    if name == "square":
        return _box(u, v, 0.78, 0.78)
    if name == "hollow_square":
        return (_box(u, v, 0.72, 0.72)).abs() - 0.2
    if name == "triangle":  # equilateral, circumradius 1
        d = v - 0.5
        for ang in (2 * math.pi / 3, 4 * math.pi / 3):
            d = torch.maximum(d, math.sin(ang) * u + math.cos(ang) * v - 0.5)
        return d
    if name == "plus":
        return torch.minimum(_box(u, v, 1.0, 0.3), _box(u, v, 0.3, 1.0))
    if name == "bar":
        return _box(u, v, 1.0, 0.3)
    if name == "stripes":  # a grating inside a disk: 2-3 bright bands
        inside = r - 0.95
        band = -torch.cos(u * (2.5 * math.pi / 0.95) + phase) * 0.12
        return torch.maximum(inside, band)
    if name == "checker":  # 3x3 checkerboard inside a square
        inside = _box(u, v, 0.8, 0.8)
        f = 1.5 * math.pi / 0.8
        cell = -torch.sin(u * f + phase) * torch.sin(v * f + phase) * 0.1
        return torch.maximum(inside, cell)
    if name == "two_dots":
        d1 = torch.sqrt((u - 0.55) ** 2 + v * v) - 0.38
        d2 = torch.sqrt((u + 0.55) ** 2 + v * v) - 0.38
        return torch.minimum(d1, d2)
    raise ValueError(label)


def _render_shapes(labels: Tensor, generator: torch.Generator, size: int = 32) -> Tensor:
    """Images ``[n, 3, size, size]`` in about ``[0, 1]`` for the given labels."""
    n = labels.shape[0]
    g = generator

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g)

    # per-image parameters, drawn in a fixed order for every image (independent of its label)
    radius = 7.0 + 5.0 * rand(n)  # shape radius in pixels
    cx = (rand(n) * 2 - 1) * (size / 2 - radius - 1)  # centre, in pixels from the image centre
    cy = (rand(n) * 2 - 1) * (size / 2 - radius - 1)
    angle = rand(n) * 2 * math.pi
    phase = rand(n) * 2 * math.pi
    bg = rand(n, 3)
    direction = F.normalize(torch.randn(n, 3, generator=g), dim=1)
    contrast = 0.35 + 0.5 * rand(n)
    fg = bg + direction * contrast[:, None]
    fg = fg + (fg.clamp(0, 1) - fg) * 2  # reflect into [0, 1] (keeps most of the contrast)
    fg = fg.clamp(0, 1)
    grad_dir = rand(n) * 2 * math.pi
    grad_amp = 0.25 * rand(n, 3)
    noise_std = 0.03 + 0.07 * rand(n)
    blob_r = 1.5 + 2.0 * rand(n)
    blob_x = (rand(n) * 2 - 1) * (size / 2 - 2)
    blob_y = (rand(n) * 2 - 1) * (size / 2 - 2)
    blob_col = rand(n, 3)
    noise = torch.randn(n, 3, size, size, generator=g)

    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    ys, xs = coords[None, :, None], coords[None, None, :]  # [1, H, 1], [1, 1, W]
    dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
    c, s = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    rad = radius[:, None, None]
    u, v = (c * dx + s * dy) / rad, (-s * dx + c * dy) / rad

    sdf = torch.empty(n, size, size)
    for k in range(len(SHAPE_CLASSES)):
        sel = labels == k
        if sel.any():
            sdf[sel] = _sdf(k, u[sel], v[sel], phase[sel][:, None, None])
    # anti-aliased coverage: the distance in pixels through a ~1 px wide sigmoid edge
    mask = torch.sigmoid(-sdf * rad / 0.5).unsqueeze(1)  # [n, 1, H, W]

    gx, gy = torch.cos(grad_dir)[:, None, None], torch.sin(grad_dir)[:, None, None]
    ramp = ((gx * xs + gy * ys) / (size / 2)).unsqueeze(1)  # [n, 1, H, W] in [-1.4, 1.4]
    background = bg[:, :, None, None] + grad_amp[:, :, None, None] * ramp
    blob_d = torch.sqrt((xs - blob_x[:, None, None]) ** 2 + (ys - blob_y[:, None, None]) ** 2)
    blob = torch.sigmoid((blob_r[:, None, None] - blob_d) / 0.5).unsqueeze(1)
    background = background * (1 - blob) + blob_col[:, :, None, None] * blob
    img = background * (1 - mask) + fg[:, :, None, None] * mask
    return img + noise_std[:, None, None, None] * noise


def shapes32(seed: int = 0) -> Splits:
    """Procedural shapes and textures, ``[N, 3, 32, 32]``, 10 balanced classes
    (:data:`SHAPE_CLASSES`).

    Each image: a coloured background with a random linear gradient, one shape of a random
    colour (contrast 0.35-0.85 from the background), radius 7-12 px, random position and
    rotation, a small distractor blob of a random colour, and Gaussian pixel noise (std
    0.03-0.10).  Each image is centred on its own per-channel mean and scaled by 5.  Every
    class is invariant under flips and 90 degree rotations, so training may use
    :func:`dihedral` augmentation (:data:`DATASETS` declares it).  Sizes
    :data:`SHAPES_SIZES`; each split is drawn from its own generator, so a split does not
    change when another one's size does.
    """
    splits = []
    for i, n in enumerate(SHAPES_SIZES):
        g = torch.Generator().manual_seed(seed * 1000 + 17 + i)
        labels = torch.arange(n) % len(SHAPE_CLASSES)
        labels = labels[torch.randperm(n, generator=g)]
        img = _render_shapes(labels, g)
        # per-image centering (background ~0); the mean in float64 so that its float32 value
        # does not depend on how many threads sum it
        img = img - img.double().mean(dim=(2, 3), keepdim=True).float()
        splits.append(TensorDataset((img / 0.2).contiguous(), labels))
    return Splits(*splits)


DATASETS: dict[str, DatasetInfo] = {
    "digits32": DatasetInfo("digits32", digits32, "image", (3, 32, 32), 10),
    "shapes32": DatasetInfo("shapes32", shapes32, "image", (3, 32, 32), 10, augment=dihedral),
    "digits_seq": DatasetInfo("digits_seq", digits_seq, "sequence", (8, 8), 10),
}
"""The zoo's data sets by name."""


def load(name: str, seed: int = 0) -> Splits:
    """``DATASETS[name].loader(seed)``, with a helpful error for an unknown name."""
    if name not in DATASETS:
        raise KeyError(f"unknown data set {name!r}; choose from {sorted(DATASETS)}")
    return DATASETS[name].loader(seed)
