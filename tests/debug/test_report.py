"""report(): HTML + PNGs, rendered in headless Chromium (skipped when it is not installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest

import fxquant
from fxquant.debug.compare import compare
from fxquant.debug.report import report
from fxquant.debug.sensitivity import sensitivity

from . import calib_batches, hostile_cnn

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.src: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.src.append(dict(attrs)["src"])
        if tag == "table":
            self.tables += 1


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


@pytest.fixture(scope="module")
def inputs():
    model = hostile_cnn()
    data = calib_batches()
    q = fxquant.prepare(model, data[0], fxquant.default_calibration_qconfig_setter)
    fxquant.calibrate(q, data, progress=False)
    cmp = compare(model, q, data[:2])
    sens = sensitivity(q, data[:1], "L1", float_model=model, progress=False)
    return cmp, sens


def _fake_search():
    P = SimpleNamespace
    pts = [P(label="all int4", cost=10.0, accuracy=60.0, on_front=True),
           P(label="mixed", cost=20.0, accuracy=93.0, on_front=True),
           P(label="all int8", cost=40.0, accuracy=94.0, on_front=True),
           P(label="worse", cost=30.0, accuracy=80.0, on_front=False)]
    return P(points=pts, chosen=pts[1], target=93.5 - 0.5, objective="size",
             float_accuracy=93.5, allowed_drop=0.5)


def test_report_files_and_images(inputs, tmp_path):
    cmp, sens = inputs
    out = report(tmp_path / "r.html", compare=cmp, sensitivity=sens, search=_fake_search())
    text = open(out, encoding="utf-8").read()
    p = _Images()
    p.feed(text)
    assert len(p.src) == 4  # sqnr, histograms, sensitivity, pareto
    for src in p.src:
        f = tmp_path / src
        assert f.is_file() and f.read_bytes()[:8] == PNG, src
    assert p.tables >= 3
    assert "conv2" in text and "_generated_relu_1" in text
    assert "<script" not in text and "http" not in text
    assert sorted(os.listdir(tmp_path)) == sorted(["r.html", *p.src])  # no temp files left


def test_embedded_report_is_one_file(inputs, tmp_path):
    cmp, _ = inputs
    report(tmp_path / "one.html", compare=cmp, embed=True)
    assert os.listdir(tmp_path) == ["one.html"]
    p = _Images()
    p.feed((tmp_path / "one.html").read_text())
    assert p.src and all(s.startswith("data:image/png;base64,") for s in p.src)


def test_report_needs_something(tmp_path):
    with pytest.raises(ValueError):
        report(tmp_path / "x.html")


def test_report_renders_in_headless_chromium(inputs, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium) - render check skipped")
    cmp, sens = inputs
    out = report(tmp_path / "r.html", compare=cmp, sensitivity=sens, search=_fake_search())
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--allow-file-access-from-files", "--disable-dev-shm-usage"]
    shot = tmp_path / "screenshot.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,2400",
                    "file://" + out], check=True, capture_output=True, timeout=120)
    assert shot.is_file() and shot.read_bytes()[:8] == PNG
    from matplotlib import image as mpimg

    pix = mpimg.imread(str(shot))
    assert pix.shape[0] >= 1000 and pix.std() > 0.05  # not a blank page
    # every <img> decoded by Chromium: a copy of the page reports naturalWidth in its title
    probe = tmp_path / "probe.html"
    probe.write_text(open(out, encoding="utf-8").read().replace(
        "</body>", "<script>window.addEventListener('load',()=>{document.title='IMG:'+"
        "Array.from(document.images).map(i=>i.complete&&i.naturalWidth>0?1:0).join('')});"
        "</script></body>"))
    dom = subprocess.run([*base, "--dump-dom", "--virtual-time-budget=10000",
                          "file://" + str(probe)], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    flags = dom.split("<title>IMG:", 1)[1].split("</title>", 1)[0]
    assert flags == "1111", f"broken images in the report: {flags}"
