"""The same seed gives byte-identical files: ONNX, AIMET encodings, state dicts, checkpoints.

A fresh Python process (another ``PYTHONHASHSEED``, so set / dict iteration orders that leak into
a file would show) and this one build, calibrate, QAT-train and export the same model from the
same seed; every file must match byte for byte.  Same torch version and thread count (1, as the
test suite runs) assumed: float reductions may otherwise change.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import torch
import torch.nn.functional as F

import fxquant
from tests.distributed.models import SmallNet

ROOT = pathlib.Path(__file__).resolve().parents[2]
FILES = ("ptq.onnx", "ptq.encodings", "ptq_v1.encodings", "ptq_state.pt", "ptq.fxq",
         "qat.onnx", "qat_state.pt", "qat.fxq")


def write_artifacts(out: pathlib.Path) -> None:
    """Everything a seed decides, written to ``out``."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SmallNet().eval()
    data = [torch.randn(4, 3, 8, 8) for _ in range(4)]
    ptq = fxquant.prepare(model, data[0], fxquant.default_calibration_qconfig_setter,
                          backend="onnxruntime")
    fxquant.calibrate(ptq, data, progress=False)
    fxquant.export_onnx(ptq, data[0], out / "ptq.onnx")
    fxquant.export_encodings(ptq, out / "ptq.encodings", onnx_path=out / "ptq.onnx")
    fxquant.export_encodings(ptq, out / "ptq_v1.encodings", onnx_path=out / "ptq.onnx",
                             version="1.0.0")
    torch.save(ptq.state_dict(), out / "ptq_state.pt")
    fxquant.save(ptq, out / "ptq.fxq")
    qat = fxquant.prepare(model, data[0], fxquant.get_qconfig(learnable=True),
                          backend="onnxruntime")
    fxquant.calibrate(qat, data, progress=False)
    fxquant.set_fake_quantize(qat, fxquant.FakeQuantState.QAT)
    opt = torch.optim.SGD(qat.parameters(), lr=0.01)
    qat.train()
    for x in data:
        loss = F.cross_entropy(qat(x), torch.randint(0, 5, (len(x),)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    fxquant.set_fake_quantize(qat.eval(), fxquant.FakeQuantState.VALIDATION)
    fxquant.export_onnx(qat, data[0], out / "qat.onnx")
    torch.save(qat.state_dict(), out / "qat_state.pt")
    fxquant.save(qat, out / "qat.fxq")


def test_same_seed_gives_byte_identical_files_in_a_fresh_process(tmp_path):
    here, fresh = tmp_path / "here", tmp_path / "fresh"
    here.mkdir()
    fresh.mkdir()
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    code = ("import pathlib, sys; from tests.export.test_determinism import write_artifacts; "
            "write_artifacts(pathlib.Path(sys.argv[1]))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(fresh)], cwd=ROOT, env=env)
    write_artifacts(here)  # meanwhile, in this process
    assert proc.wait(timeout=300) == 0
    for name in FILES:
        a, b = (here / name).read_bytes(), (fresh / name).read_bytes()
        assert len(a) > 100 and a == b, f"{name} differs between two runs with the same seed"
