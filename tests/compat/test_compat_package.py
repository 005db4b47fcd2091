"""The compat layers import nothing from torch.ao, and their docstring examples run."""

from __future__ import annotations

import ast
import doctest
import importlib
import pathlib

import pytest

import fxquant.compat

COMPAT = pathlib.Path(fxquant.compat.__file__).parent
PACKAGES = ["torch_ao", "horizon", "aimet", "pytorch_quantization", "modelopt", "tinynn"]


def _torch_ao_references(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch.ao"):
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("torch.ao")]
        elif (isinstance(node, ast.Attribute) and node.attr == "ao"
              and isinstance(node.value, ast.Name) and node.value.id == "torch"):
            found.append("torch.ao")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            found += [a.value for a in node.args
                      if isinstance(a, ast.Constant) and str(a.value).startswith("torch.ao")]
    return found


def test_compat_sources_import_nothing_from_torch_ao():
    files = sorted(COMPAT.rglob("*.py"))
    assert len(files) > 20
    offenders = {str(p.relative_to(COMPAT)): refs for p in files
                 if (refs := _torch_ao_references(ast.parse(p.read_text())))}
    assert not offenders, offenders


def test_the_check_catches_torch_ao():
    code = "import torch.ao.quantization as q\nfrom torch.ao.nn import quantized\nx = torch.ao\n"
    assert len(_torch_ao_references(ast.parse(code))) == 3


@pytest.mark.parametrize("name", PACKAGES)
def test_docstring_examples_run(name):
    module = importlib.import_module(f"fxquant.compat.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
