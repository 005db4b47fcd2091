"""The README's "Distributed QAT" script runs under ``torchrun`` with 2 CPU processes (gloo).

(The default suite runs it alone, in ``tests/test_docs.py``; this runs it as documented, with
torchrun: two fresh processes, hence ``slow``.)
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

import fxquant

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_readme_distributed_script_under_torchrun(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    script = next(b for b in blocks if b.startswith("# train_qat.py"))
    flow = blocks[0]  # the user flow defines Net, model and data
    (tmp_path / "train_qat.py").write_text(flow + "\n" + script)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node=2", "train_qat.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(torchrun, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # rank 0's checkpoint loads in this (single) process, from the README's float model class
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    exec(compile(flow, "README.md", "exec"), namespace)
    loaded = fxquant.load(tmp_path / "qat_ddp.fxq", namespace["Net"]())
    assert loaded(namespace["data"][0]).shape == (32, 10)
