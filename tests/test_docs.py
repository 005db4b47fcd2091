"""The README's user flow and the design doc's example actually run."""

from __future__ import annotations

import pathlib
import re
import runpy

ROOT = pathlib.Path(__file__).resolve().parents[1]


FENCE = re.compile(r"^```(\S*)\n(.*?)^```", re.S | re.M)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_code_blocks_are_python_or_shell_or_output():
    """No untested fragments: a block is ```python (run below), ```sh (each command run by the
    test named in :data:`SHELL_TESTS`) or unlabelled output."""
    for doc in DOCS:
        for lang, _ in FENCE.findall(doc.read_text()):
            assert lang in ("python", "sh", ""), f"{doc.name}: a ```{lang} block"


def test_readme_user_flow_runs(tmp_path, monkeypatch, capsys):
    """Every ```python block of the README runs, in order, in one namespace."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python block"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}  # later blocks continue the earlier ones
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert (tmp_path / "qat.pt").exists()
    assert "fxquant summary" in capsys.readouterr().out


def _squash(code: str) -> str:
    return " ".join(code.split())


def test_design_example_runs_and_its_listings_are_current(capsys):
    """docs/design.md's graph listings (``def forward`` blocks) are what design_example.py
    prints today; its other ```python blocks run."""
    runpy.run_path(str(ROOT / "docs" / "design_example.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "prepared graph" in out and "coverage: 0 op(s) left in float" in out
    text = (ROOT / "docs" / "design.md").read_text()
    blocks = [code for lang, code in FENCE.findall(text) if lang == "python"]
    listings = [b for b in blocks if b.lstrip().startswith("def forward")]
    assert len(listings) == 2
    for listing in listings:
        assert _squash(listing) in _squash(out), listing.splitlines()[1]
    namespace = {"__name__": "__design__"}
    for block in blocks:
        if block not in listings:
            exec(compile(block, "docs/design.md", "exec"), namespace)


SHELL_TESTS = {
    "make demo": "tests/test_demo.py",
    "make test": ".ci/run",
    "torchrun": "tests/distributed/test_readme_torchrun.py",
}


def test_shell_blocks_are_run_by_a_test():
    """Every command of a ```sh block is run by a test (or CI itself)."""
    for doc in DOCS:
        for lang, code in FENCE.findall(doc.read_text()):
            if lang != "sh":
                continue
            for line in code.splitlines():
                cmd = line.split("#")[0].strip().rstrip("\\").strip()
                if not cmd or cmd.startswith("--"):
                    continue
                owner = next((t for k, t in SHELL_TESTS.items() if cmd.startswith(k)), None)
                assert owner and (ROOT / owner).exists(), f"{doc.name}: untested command {cmd!r}"
