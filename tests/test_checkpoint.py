"""fxquant.save / fxquant.load: versioned checkpoints restored bit-exactly without setter code.

* Round trips (fx capture, a float island, eager capture) restore outputs, every quantizer's
  qparams and spec, the whole state dict and the train / eval flags bit for bit -- in a fresh
  Python process too, which imports only the float model's class (no setter code).  The fx case
  mixes LSQ, a fixed scale, int16, an MSE observer and AdaRound-frozen weights.
* Resuming QAT from a checkpoint (optimizer state saved by the user) equals training straight
  through, bit for bit.
* Bad files (newer version, truncated, corrupt, not fxquant's) and a model that does not match
  raise a CheckpointError naming the file and what differs; saving is atomic.
"""

from __future__ import annotations

import doctest
import io
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant import CheckpointError, ConfigError, FakeQuantState, get_qconfig, qint16
from fxquant import checkpoint as checkpoint_module
from fxquant.graph import get_report

from .distributed.models import SmallNet
from .graph.models import BranchInSubmoduleF

ROOT = pathlib.Path(__file__).resolve().parents[1]

# every kind of quantizer state: LSQ (conv2), int16 (fc's output), a fixed scale (the add), an
# MSE histogram observer (fc), moving averages and per-channel min-max weights (the rest)
SETTER = (
    fxquant.ModuleNameQconfigSetter({
        "conv2": get_qconfig(learnable=True),
        "fc": get_qconfig(out_dtype=qint16,
                          observer=fxquant.MSEObserver.with_args(bins=256)),
        "_generated_add_0": get_qconfig(weight_dtype=None, fixed_scale=0.0625),
    }),
    fxquant.default_qat_qconfig_setter,
)


class InputBranch(nn.Module):
    """Untraceable forward (eager capture) whose branch depends on the example inputs' values."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 1)
        self.b = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.stem(x))
        y = self.a(y) if x.mean() > 0 else self.b(y)
        return self.fc((y * 2.0).mean((2, 3)))


def batches(n: int = 3, seed: int = 0, shift: float = 0.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 8, 8, generator=g) + shift for _ in range(n)]


def qat_steps(qmodel: nn.Module, opt: torch.optim.Optimizer, data: list[torch.Tensor]) -> None:
    qmodel.train()
    for x in data:
        loss = qmodel(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def build(case: str) -> tuple[nn.Module, list[torch.Tensor]]:
    """A calibrated, QAT-trained prepared model of ``case`` and its data."""
    torch.manual_seed(1)
    if case == "fx":
        model, setter, data = SmallNet().eval(), SETTER, batches()
    elif case == "island":
        model, setter, data = BranchInSubmoduleF().eval(), fxquant.default_qat_qconfig_setter, \
            batches()
    else:  # example inputs with a negative mean: the eager forward takes branch `b`
        model, setter, data = InputBranch().eval(), fxquant.default_qat_qconfig_setter, \
            batches(shift=-1.0)
    q = fxquant.prepare(model, data[0], setter)
    fxquant.calibrate(q, data, progress=False)
    if case == "fx":  # AdaRound freezes the weight rounding (and marks the scales fixed)
        fxquant.adaround(q, data, num_iterations=8, max_samples=256, batch_size=64,
                         progress=False)
    fxquant.set_fake_quantize(q, FakeQuantState.QAT)
    qat_steps(q, torch.optim.SGD(q.parameters(), lr=0.01, momentum=0.9), data[:2])
    fxquant.set_fake_quantize(q.eval(), FakeQuantState.VALIDATION)
    q.fc.train()  # mixed train / eval flags and a frozen parameter must come back too
    q.fc.bias.requires_grad_(False)
    return q, data


FRESH = {"fx": SmallNet, "island": BranchInSubmoduleF, "eager": InputBranch}


def describe(qmodel: nn.Module, x: torch.Tensor) -> dict:
    """Outputs, every quantizer's qparams and spec, the state dict and train flags."""
    out = {"output": qmodel(x).detach(), "state": dict(qmodel.state_dict()),
           "training": [p for p, m in qmodel.named_modules() if m.training],
           "no_grad": [p for p, t in qmodel.named_parameters() if not t.requires_grad]}
    for path, m in qmodel.named_modules():
        if isinstance(m, fxquant.FakeQuantize):
            qp = m.qparams()
            out[f"qparams:{path}"] = (qp.scale, qp.zero_point, qp.dtype.name,
                                      repr(qp.granularity), qp.scale_math.value)
            out[f"spec:{path}"] = json.dumps(m.spec().to_dict(), sort_keys=True)
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        va, vb = a[key], b[key]
        if key == "state":
            assert va.keys() == vb.keys()
            bad = [k for k in va if va[k].dtype != vb[k].dtype or not torch.equal(va[k], vb[k])]
            assert not bad, f"state dict differs at {bad[:5]}"
        elif key.startswith("qparams:"):
            assert torch.equal(va[0], vb[0]) and torch.equal(va[1], vb[1]), key
            assert va[2:] == vb[2:], key
        elif isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), key
        else:
            assert va == vb, key


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[nn.Module, list[torch.Tensor], pathlib.Path]]:
    folder = tmp_path_factory.mktemp("ckpt")
    out = {}
    for case in FRESH:
        q, data = build(case)
        path = folder / f"{case}.fxq"
        assert fxquant.save(q, path) == str(path)
        out[case] = (q, data, path)
    return out


@pytest.mark.parametrize("case", list(FRESH))
def test_round_trip_is_bit_exact(case, saved):
    q, _, path = saved[case]
    assert get_report(q).capture_mode == ("eager" if case == "eager" else "fx")
    torch.manual_seed(123)  # other initial weights than the saved model's: they are replaced
    fresh = FRESH[case]()
    loaded = fxquant.load(path, fresh)
    assert not any(isinstance(m, fxquant.FakeQuantize) for m in fresh.modules())  # untouched
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        assert_same(describe(q, x), describe(loaded, x))
    quantizers = {p: m for p, m in loaded.named_modules() if isinstance(m, fxquant.FakeQuantize)}
    assert all(fq.state is FakeQuantState.VALIDATION for fq in quantizers.values())
    if case == "fx":
        kinds = {p: m.spec() for p, m in quantizers.items()}
        assert kinds["conv2.weight_fake_quant"].learnable
        assert kinds["fc.output_fake_quant"].dtype == qint16
        assert kinds["_generated_add_0.output_fake_quant"].fixed_scale == 0.0625
        assert kinds["conv1.weight_fake_quant"].fixed_in_qat  # AdaRound-frozen
        assert all(kinds[p].fixed_in_qat for p in kinds if p.endswith("weight_fake_quant"))
    if case == "eager":
        assert get_report(loaded).ops["b"].quantizers  # the branch the example inputs took
        assert not get_report(loaded).ops["a"].quantizers
    # the loaded model saves to the same bytes
    again = path.with_suffix(".again")
    fxquant.save(loaded, again)
    assert again.read_bytes() == path.read_bytes()


def test_fresh_process_restores_without_setter_code(saved, tmp_path):
    """Another interpreter (another hash seed), importing only the float model's class."""
    q, _, path = saved["fx"]
    x = torch.randn(5, 3, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch, fxquant\n"
        "from tests.distributed.models import SmallNet\n"
        "from tests.test_checkpoint import describe\n"
        "torch.set_num_threads(1)\n"
        "q = fxquant.load(sys.argv[1], SmallNet())\n"
        "with torch.no_grad():\n"
        "    torch.save(describe(q, torch.load(sys.argv[2], weights_only=True)), sys.argv[3])\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "4321", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "x.pt"),
                    str(tmp_path / "out.pt")], cwd=ROOT, env=env, check=True, timeout=300)
    with torch.no_grad():
        expected = describe(q, x)
    assert_same(expected, torch.load(tmp_path / "out.pt", weights_only=True))
    assert "setter" not in code.lower().replace("without", "")


def test_resume_qat_equals_training_straight_through(tmp_path):
    torch.manual_seed(2)
    model = SmallNet().eval()
    data = batches(6, seed=4)

    def start() -> tuple[nn.Module, torch.optim.Optimizer]:
        q = fxquant.prepare(model, data[0], SETTER)
        fxquant.calibrate(q, data[:2], progress=False)
        fxquant.set_fake_quantize(q, FakeQuantState.QAT)
        return q, torch.optim.SGD(q.parameters(), lr=0.02, momentum=0.9)

    straight, opt = start()
    qat_steps(straight, opt, data)  # N + M = 6 steps
    first, opt = start()
    qat_steps(first, opt, data[:3])  # N = 3 steps, then save both halves of the state
    fxquant.save(first, tmp_path / "qat.fxq")
    torch.save({"optimizer": opt.state_dict()}, tmp_path / "opt.pt")
    resumed = fxquant.load(tmp_path / "qat.fxq", SmallNet())
    assert resumed.training and resumed.conv2.weight_fake_quant.state is FakeQuantState.QAT
    opt = torch.optim.SGD(resumed.parameters(), lr=0.02, momentum=0.9)
    opt.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True)["optimizer"])
    qat_steps(resumed, opt, data[3:])  # M = 3 more
    a, b = straight.state_dict(), resumed.state_dict()
    moved = fxquant.load(tmp_path / "qat.fxq", SmallNet()).state_dict()
    assert not torch.equal(a["conv2.weight_fake_quant.scale"],
                           moved["conv2.weight_fake_quant.scale"])  # LSQ kept learning
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"resumed QAT differs at {bad[:5]}"
    x = torch.randn(3, 3, 8, 8)
    assert torch.equal(straight.eval()(x), resumed.eval()(x))


def test_statistics_pending_mid_calibration_and_added_biases_are_restored(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(144, 2, bias=False)).eval()
    data = batches(2, seed=5)
    q = fxquant.prepare(model, data[0], fxquant.default_calibration_qconfig_setter)
    fxquant.calibrate(q, data, progress=False)
    fxquant.bias_correction(q, data, progress=False)  # creates the conv / linear biases
    assert q.get_submodule("0").bias is not None
    before = q.get_submodule("1").output_fake_quant.scale.clone()
    fxquant.set_fake_quantize(q, FakeQuantState.CALIBRATION)
    q(batches(1, seed=6, shift=3.0)[0])  # observed, no scale computed yet
    fxquant.save(q, tmp_path / "mid.fxq")
    loaded = fxquant.load(tmp_path / "mid.fxq", nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2, bias=False)))
    assert loaded.get_submodule("0").bias.requires_grad
    for m in (q, loaded):  # leaving CALIBRATION turns the pending statistics into scales
        fxquant.set_fake_quantize(m, FakeQuantState.VALIDATION)
    x = data[1]
    assert_same(describe(q, x), describe(loaded, x))
    assert not torch.equal(loaded.get_submodule("1").output_fake_quant.scale, before)


def test_ddp_wrapper_is_looked_through(saved, tmp_path):
    q, _, path = saved["island"]
    wrapped = torch.nn.DataParallel(q)  # the same .module convention as DistributedDataParallel
    fxquant.save(wrapped, tmp_path / "wrapped.fxq")
    assert (tmp_path / "wrapped.fxq").read_bytes() == path.read_bytes()


# -- errors ------------------------------------------------------------------------------------
def _payload(path: pathlib.Path) -> dict:
    return torch.load(path, weights_only=True)


def _write(path: pathlib.Path, payload) -> pathlib.Path:
    torch.save(payload, path)
    return path


def test_newer_version_is_refused_naming_file_and_versions(saved, tmp_path):
    _, _, path = saved["fx"]
    newer = _write(tmp_path / "newer.fxq", {**_payload(path), "version": 2})
    with pytest.raises(CheckpointError, match=r"newer.fxq has format version 2.*up to 1"):
        fxquant.load(newer, SmallNet())
    # a QConfig inside written by a newer fxquant is refused too, naming the file
    payload = _payload(path)
    cfg = json.loads(payload["config"])
    cfg["qconfigs"][0]["version"] = 99
    inner = _write(tmp_path / "inner.fxq", {**payload, "config": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match=r"inner.fxq: QConfig: written by a newer"):
        fxquant.load(inner, SmallNet())


def test_truncated_corrupt_and_foreign_files_raise_checkpoint_error(saved, tmp_path):
    _, _, path = saved["fx"]
    data = path.read_bytes()
    cases = {
        "truncated.fxq": data[: len(data) // 2],
        "empty.fxq": b"",
        "noise.fxq": bytes(range(256)) * 8,
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=rf"{name} cannot be read: it is truncated"):
            fxquant.load(tmp_path / name, SmallNet())
    model_file = _write(tmp_path / "pickled_module.pt", nn.Linear(2, 2))  # not weights-only
    with pytest.raises(CheckpointError, match=r"pickled_module\.pt cannot be read"):
        fxquant.load(model_file, SmallNet())
    plain = _write(tmp_path / "plain.pt", saved["fx"][0].state_dict())
    with pytest.raises(CheckpointError, match=r"plain\.pt is not an fxquant checkpoint.*plain "
                                              r"state dict"):
        fxquant.load(plain, SmallNet())
    with pytest.raises(CheckpointError, match=r"missing\.fxq does not exist"):
        fxquant.load(tmp_path / "missing.fxq", SmallNet())
    payload = _payload(path)
    corrupt = {
        "json": {**payload, "config": "{not json"},
        "key": {**payload, "colour": "red"},
        "index": {**payload, "config": payload["config"].replace('"qconfig":0', '"qconfig":999')},
        "tensors": {**payload, "state_dict": {"conv1.weight": "oops"}},
        "version": {**payload, "version": "1"},
    }
    for what, bad in corrupt.items():
        with pytest.raises(CheckpointError, match=r"corrupt\.fxq.*(corrupt|bad format version)"):
            fxquant.load(_write(tmp_path / "corrupt.fxq", bad), SmallNet())
        assert what


class SmallNetPlus(SmallNet):
    """SmallNet whose code changed: one more op after the mean."""

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = x + F.relu(self.conv2(x))
        return self.fc(torch.tanh(x.mean((2, 3))))


def test_a_model_that_does_not_match_is_refused_naming_what_differs(saved, tmp_path):
    q, _, path = saved["fx"]
    with pytest.raises(CheckpointError, match=r"op '_generated_tanh_0' is not in the checkpoint"):
        fxquant.load(path, SmallNetPlus())
    wider = SmallNet()
    wider.fc = nn.Linear(8, 7)
    with pytest.raises(CheckpointError, match=r"does not match.*fc\.weight.*torch.Size"):
        fxquant.load(path, wider)
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten())
    with pytest.raises(CheckpointError, match=r"cannot be prepared with the saved example"):
        fxquant.load(path, nn.Sequential(nn.Linear(5, 2)))
    with pytest.raises(CheckpointError, match=r"the saved op 'x' is missing"):
        fxquant.load(path, other)
    with pytest.raises(ConfigError, match="pass the float model"):
        fxquant.load(path, q)
    # a spec the qconfig would not build (a tampered file): named with the differing field
    payload = _payload(path)
    cfg = json.loads(payload["config"])
    index = cfg["quantizers"]["fc.output_fake_quant"]
    cfg["specs"].append({**cfg["specs"][index], "eps": 1e-3})
    cfg["quantizers"]["fc.output_fake_quant"] = len(cfg["specs"]) - 1
    tampered = _write(tmp_path / "spec.fxq", {**payload, "config": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match=r"quantizer 'fc.output_fake_quant' is rebuilt "
                                              r"with other settings than saved.*'eps'"):
        fxquant.load(tampered, SmallNet())
    cfg = json.loads(payload["config"])
    for change, match in [
        ({"capture_mode": "eager"}, r"captured 'eager' when saved, 'fx' now"),
        ({"ops": {**cfg["ops"], "fc": {**cfg["ops"]["fc"], "folded": "bn9"}}},
         r"op 'fc' is quantized differently than when saved"),
    ]:
        bad = _write(tmp_path / "bad.fxq", {**payload, "config": json.dumps({**cfg, **change})})
        with pytest.raises(CheckpointError, match=match):
            fxquant.load(bad, SmallNet())


def test_save_errors_and_atomic_writes(saved, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"Linear is not a model returned by fxquant\.prepare"):
        fxquant.save(nn.Linear(2, 2), tmp_path / "x.fxq")
    q = saved["fx"][0]
    with pytest.raises(CheckpointError, match=r"cannot write .*no_such_folder"):
        fxquant.save(q, tmp_path / "no_such_folder" / "x.fxq")
    target = tmp_path / "target.fxq"
    target.write_bytes(b"previous")

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(CheckpointError, match="disk full"):
        fxquant.save(q, target)
    assert target.read_bytes() == b"previous"  # untouched, and no temp file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target.fxq"]
    monkeypatch.undo()
    custom = fxquant.prepare(nn.Linear(4, 2), torch.randn(1, 4), fxquant.QConfig(
        output=fxquant.FakeQuantize.with_args(observer=_Counting)))
    with pytest.raises(ConfigError, match=r"op '.*'.*_Counting"):
        fxquant.save(custom, tmp_path / "custom.fxq")
    weird = fxquant.prepare(nn.Linear(4, 2), {"input": torch.randn(1, 4)})
    get_report(weird).example_inputs.kwargs["input"] = io.BytesIO()  # not storable as data
    with pytest.raises(ConfigError, match=r"example input kwargs\['input'\] is a BytesIO"):
        fxquant.save(weird, tmp_path / "weird.fxq")
    assert not (tmp_path / "custom.fxq").exists() and not (tmp_path / "weird.fxq").exists()


class _Counting(fxquant.MinMaxObserver):
    """An observer fxquant does not know: its quantizers cannot be saved as data."""


def test_doctests():
    assert doctest.testmod(checkpoint_module, raise_on_error=True).attempted > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_cuda_model_loads_on_either_device(tmp_path):
    torch.manual_seed(0)
    data = [b.cuda() for b in batches()]
    q = fxquant.prepare(SmallNet().eval().cuda(), data[0], SETTER)
    fxquant.calibrate(q, data, progress=False)
    fxquant.save(q, tmp_path / "cuda.fxq")
    on_cpu = fxquant.load(tmp_path / "cuda.fxq", SmallNet())
    assert all(t.device.type == "cpu" for t in on_cpu.state_dict().values())
    a, b = q.state_dict(), on_cpu.state_dict()
    assert all(torch.equal(a[k].cpu(), b[k]) for k in a)
    on_gpu = fxquant.load(tmp_path / "cuda.fxq", SmallNet().cuda())
    assert all(t.device.type == "cuda" for t in on_gpu.state_dict().values())
    assert torch.equal(on_gpu(data[1]), q(data[1]))
