"""The README's user flow and the design doc's example actually run."""

from __future__ import annotations

import pathlib
import re
import runpy

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_user_flow_runs(tmp_path, monkeypatch, capsys):
    """Every ```python block of the README runs (```py blocks are fragments)."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python block"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}  # later blocks continue the earlier ones
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert (tmp_path / "qat.pt").exists()
    assert "fxquant summary" in capsys.readouterr().out


def test_design_example_runs(capsys):
    runpy.run_path(str(ROOT / "docs" / "design_example.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "prepared graph" in out and "coverage: 0 op(s) left in float" in out
