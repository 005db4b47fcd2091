"""Kernel constants kept across forward passes (:mod:`fxquant.numerics.held`): reused while
their sources hold, rebuilt the moment a weight, a BN statistic or a quantizer's grid changes --
in place or replaced."""

from __future__ import annotations

import copy
import doctest

import torch
from torch import nn

import fxquant
from fxquant.graph.simulate import _CACHE, runtime_plan
from fxquant.numerics import held as held_module
from fxquant.numerics import native
from fxquant.numerics.held import KEEP_MAX_NUMEL, Snapshot, is_kept, keepable, mark_kept
from fxquant.runtime_math.grids import one_forward
from fxquant.runtime_math.weighted import WeightedKernel


def test_doctests():
    assert doctest.testmod(held_module, raise_on_error=True).attempted > 0


def test_snapshot_compares_content_dtype_and_plain_values():
    w, b = torch.randn(4, 3), torch.randn(4)
    snap = Snapshot((w, b), extra=(8, "tensor"))
    assert snap.holds((w.clone(), b.clone()), (8, "tensor"))  # replaced by equal tensors
    assert not snap.holds((w, b), (4, "tensor"))  # another grid
    assert not snap.holds((w.double(), b), (8, "tensor"))  # same values, another dtype
    assert not snap.holds((w, None), (8, "tensor"))  # the bias went away
    assert not snap.holds((w,), (8, "tensor"))
    b[2] = b[2] + 1e-6 if float(b[2]) != 0 else 1.0  # one element, in place
    assert not snap.holds((w, b), (8, "tensor"))
    nan, zero = torch.tensor([float("nan")]), torch.tensor([0.0])
    if native.available():  # bytes: a NaN holds; -0.0 after 0.0 is a change (rebuilt: safe)
        assert Snapshot((nan,)).holds((nan,))
        assert not Snapshot((zero,)).holds((-zero,))
    with native.native_kernels(False):  # torch.equal: a NaN never holds (rebuilt, never stale)
        assert not Snapshot((nan,)).holds((nan,))
        assert Snapshot((w, b)).holds((w, b), ())
        assert not Snapshot((w,)).holds((w.double(),))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _model(seed: int = 0) -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(seed)
    net = _Net()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 2.0)
    data = [torch.randn(16, 3, 6, 6) for _ in range(3)]
    qmodel = fxquant.prepare(net.eval(), data[0][:2], backend="onnxruntime")
    fxquant.calibrate(qmodel, data, progress=False)
    return qmodel.eval(), data


def _fresh(qmodel: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a model built from scratch with the same state computes (no kept constants)."""
    with torch.no_grad():
        return copy.deepcopy(qmodel)(x)


def _plans(qmodel: nn.Module) -> list[object]:
    # the runtime modules built for this model: the eval-mode one's kernels
    # (key: runtime, only, pass_through)
    return [m.__dict__.get("_weight_plan") for key, rt in _CACHE[qmodel].items()
            if key[2] and rt.module for m in rt.module.modules()
            if isinstance(m, WeightedKernel)]


def test_constants_are_kept_while_nothing_changes():
    qmodel, data = _model()
    assert set(runtime_plan(qmodel).kernels.values()) >= {"QLinearConv", "QGemm"}
    with torch.no_grad():
        first = qmodel(data[0])
        plans = _plans(qmodel)
        assert plans and all(p is not None for p in plans)
        assert torch.equal(qmodel(data[0]), first)
    assert all(a is b for a, b in zip(_plans(qmodel), plans, strict=True))  # reused
    # one batch check per pass sees every kept constant and grid hold; after an in-place change
    # it does not, and the kernels check (and rebuild) one by one
    rt = next(rt for key, rt in _CACHE[qmodel].items() if key[2])
    with one_forward():
        assert rt.check_kept() == native.available()
    with torch.no_grad():
        next(p for p in qmodel.parameters() if p.dim() == 4).add_(0.01)
    with one_forward():
        assert not rt.check_kept()
    with torch.no_grad():
        assert torch.equal(qmodel(data[0]), _fresh(qmodel, data[0]))
    with one_forward():
        assert rt.check_kept() == native.available()


def test_an_in_place_weight_or_statistic_change_is_followed():
    qmodel, data = _model()
    x = data[1]
    with torch.no_grad():
        before = qmodel(x)
        conv = next(m for m in qmodel.modules() if hasattr(m, "weight_fake_quant")
                    and isinstance(getattr(m, "weight", None), torch.Tensor)
                    and m.weight.dim() == 4)
        conv.weight.mul_(0.75)  # in place: same tensor object
        after = qmodel(x)
        assert not torch.equal(after, before)
        assert torch.equal(after, _fresh(qmodel, x))
        bn_var = next(b for n, b in qmodel.named_buffers() if n.endswith("running_var"))
        bn_var.mul_(1.7)
        assert torch.equal(qmodel(x), _fresh(qmodel, x))


def test_a_changed_grid_or_loaded_state_is_followed():
    qmodel, data = _model()
    other, _ = _model(seed=1)  # other weights and ranges
    x = data[2]
    with torch.no_grad():
        before = qmodel(x)
        qmodel.load_state_dict(other.state_dict())
        loaded = qmodel(x)
        assert torch.equal(loaded, other(x))
        assert not torch.equal(loaded, before)
        fq = next(m for m in qmodel.modules() if isinstance(m, fxquant.FakeQuantize)
                  and not m.is_weight and m.scale.dim() == 0)
        fq.scale.mul_(1.25)  # one activation grid, in place
        assert torch.equal(qmodel(x), _fresh(qmodel, x))


def test_kept_tensors_are_known_by_identity_and_only_small_plain_tensors_are_keepable():
    t = torch.ones(3)
    assert not is_kept(t)
    assert mark_kept(t) is t and is_kept(t)
    assert not is_kept(t.clone())  # the same values in another tensor are not the kept one
    assert keepable(t, None, nn.Parameter(torch.ones(2)))
    assert not keepable(torch.empty(KEEP_MAX_NUMEL + 1))
    assert not keepable(torch.empty(3, device="meta"))  # off the CPU: recomputed, not checked
