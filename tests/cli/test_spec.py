"""Model specs (:mod:`fxquant.cli.spec`): files, modules from the current folder, exported
programs, and what a factory may return."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from fxquant.cli.spec import check_runs, load_model
from fxquant.errors import ConfigError, DataError

PACKAGE_INIT = ""
PACKAGE_MODELS = textwrap.dedent('''
    import torch
    from torch import nn
    from .layers import Block   # a relative import inside the package

    class Builders:
        @staticmethod
        def small():
            return nn.Sequential(Block(), nn.Linear(4, 2)), (torch.randn(1, 4),)

    instance = nn.Linear(3, 3)

    def with_data():
        return Builders.small()[0], torch.randn(1, 4), (torch.randn(1, 4) for _ in range(10))
''')
PACKAGE_LAYERS = textwrap.dedent('''
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, features):
            return self.fc(features).relu()
''')


@pytest.fixture
def pkg(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    (root / "mypkg").mkdir(parents=True)
    (root / "mypkg" / "__init__.py").write_text(PACKAGE_INIT)
    (root / "mypkg" / "models_cli_spec.py").write_text(PACKAGE_MODELS)
    (root / "mypkg" / "layers.py").write_text(PACKAGE_LAYERS)
    (root / "helper_cli_spec.py").write_text("SCALE = 2\n")
    (root / "file_model.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn
        import helper_cli_spec   # a neighbour of this file

        def build():
            return nn.Linear(2, helper_cli_spec.SCALE)
    '''))
    monkeypatch.chdir(root)
    return root


def test_package_module_resolves_from_the_current_folder(pkg):
    loaded = load_model("mypkg.models_cli_spec:Builders.small")
    assert isinstance(loaded.model, nn.Sequential) and not loaded.model.training
    assert loaded.input_names == ("input",) and loaded.example[0].shape == (1, 4)
    assert loaded.data is None and loaded.spec == "mypkg.models_cli_spec:Builders.small"


def test_data_is_capped_and_instances_are_used_as_they_are(pkg):
    loaded = load_model("mypkg.models_cli_spec:with_data", max_batches=3)
    assert len(loaded.data) == 3
    inst = load_model("mypkg.models_cli_spec:instance")
    assert isinstance(inst.model, nn.Linear) and inst.example is None


def test_file_spec_imports_its_neighbours(pkg, monkeypatch):
    monkeypatch.chdir(pkg.parent)  # the file's folder, not the current one, is on sys.path
    loaded = load_model("proj/file_model.py:build")
    assert loaded.model.out_features == 2 and loaded.input_names == ("input",)


def test_exported_program(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    torch.export.save(torch.export.export(model, (x,)), str(tmp_path / "m.pt2"))
    loaded = load_model(str(tmp_path / "m.pt2"))
    assert loaded.fixed_shapes and loaded.input_names == ("input",)
    assert torch.equal(loaded.model(x), model(x))
    loaded.model.eval()  # a plain GraphModule (program.module() refuses eval())


def test_check_runs_names_the_shapes():
    with pytest.raises(DataError, match=r"from --input-shape 1,5 \(shapes 1x5\).*mat1 and mat2"):
        check_runs(nn.Linear(4, 2), (torch.randn(1, 5),), "--input-shape 1,5")


@pytest.mark.parametrize("spec, message", [
    ("mypkg.nothere:f", "no module 'mypkg.nothere' in the current folder"),
    ("mypkg.models_cli_spec:Builders.nope", "has no 'Builders.nope'"),
    ("mypkg.models_cli_spec:torch", "'torch' is a module, not a function"),
    ("file_model.py:", "must look like file.py:function"),
])
def test_spec_errors(pkg, spec, message):
    with pytest.raises(ConfigError, match=message):
        load_model(spec)


def test_the_current_folder_wins_over_a_module_imported_before(tmp_path, monkeypatch):
    """In-process runs from two folders, each with its own ``shadow_cli_spec.py``."""
    for name, width in (("a", 2), ("b", 3)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "shadow_cli_spec.py").write_text(
            f"from torch import nn\ndef build():\n    return nn.Linear(1, {width})\n")
    monkeypatch.chdir(tmp_path / "a")
    assert load_model("shadow_cli_spec:build").model.out_features == 2
    monkeypatch.chdir(tmp_path / "b")
    assert load_model("shadow_cli_spec:build").model.out_features == 3
