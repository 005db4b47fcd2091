"""`fxquant sensitivity` and `fxquant report` on a model named by a spec."""

from __future__ import annotations

import re
import textwrap

from fxquant.cli.main import main
from fxquant.debug import load_table

SPEC_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3),
                              nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
        return model.eval(), torch.randn(2, 3, 12, 12)

    def only_model():
        return build()[0]
''')


def _spec(tmp_path):
    path = tmp_path / "mymodel.py"
    path.write_text(SPEC_SOURCE)
    return str(path)


def test_sensitivity_command_writes_the_table(tmp_path, capsys):
    out = tmp_path / "table.pt"
    code = main(["sensitivity", f"{_spec(tmp_path)}:build", "--batches", "2", "--quiet",
                 "--out", str(out)])
    assert code == 0
    rows = load_table(out)
    assert rows and {r[1] for r in rows} <= {"activation", "weight"}
    assert (tmp_path / "table.txt").exists() and (tmp_path / "table.csv").exists()
    assert "wrote" in capsys.readouterr().out


def test_report_command_writes_html(tmp_path):
    out = tmp_path / "r.html"
    code = main(["report", f"{_spec(tmp_path)}:only_model", "--input-shape", "2,3,12,12",
                 "--batches", "2", "--quiet", "--out", str(out)])
    assert code == 0
    html = out.read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert images and all((tmp_path / src).exists() for src in images)


def test_bad_spec_is_a_clear_error(tmp_path, capsys):
    assert main(["sensitivity", "no_colon_here", "--quiet"]) == 2
    assert "must look like file.py:function" in capsys.readouterr().err
    assert main(["sensitivity", f"{_spec(tmp_path)}:only_model", "--quiet"]) == 2
    assert "--input-shape" in capsys.readouterr().err


def test_package_module_spec_resolves_from_the_current_folder(tmp_path, monkeypatch, capsys):
    """``fxquant sensitivity mymodel:build`` (issue 16): the module is in the current folder,
    which a console script does not put on sys.path by itself."""
    (tmp_path / "mymodel_debug_cli.py").write_text(SPEC_SOURCE)
    monkeypatch.chdir(tmp_path)
    assert main(["sensitivity", "mymodel_debug_cli:build", "--batches", "2", "--quiet",
                 "--out", "t.pt"]) == 0
    assert load_table(tmp_path / "t.pt")
    capsys.readouterr()
    assert main(["report", "mymodel_debug_cli:only_model", "--input-shape", "2,3,5",
                 "--quiet"]) == 2
    assert "cannot run on the inputs from --input-shape 2,3,5" in capsys.readouterr().err
