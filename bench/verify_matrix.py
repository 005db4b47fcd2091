"""The verify matrix of the export tests' models: every model x profile x runtime.

``python bench/verify_matrix.py [--inputs N]`` prepares and calibrates the models of
``tests/export`` (ResNet-style CNN, depthwise-separable net, transformer encoder, int16 mixed
precision, ConvTranspose decoder) exactly as the tests do, exports each with the
``onnxruntime``, ``openvino`` and ``generic`` profiles, runs :func:`fxquant.verify` in ONNX
Runtime and OpenVINO on ``N`` fresh inputs and prints a Markdown table: % identical output codes,
max step difference, how often the plain float32 simulation agrees with the reference, the
worst quantized tensor, and the runtime's integer ops.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tests.export.test_onnx_export import MODELS  # noqa: E402

import fxquant  # noqa: E402

PROFILES = ("onnxruntime", "openvino", "generic")
RUNTIMES = ("onnxruntime", "openvino")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/verify_matrix.py", description=__doc__)
    p.add_argument("--inputs", type=int, default=256, help="evaluation inputs per model")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    print("| model | profile | runtime | reference | output identical | max steps | "
          "f32 sim vs reference | worst tensor identical | integer ops |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="fxquant_verify_matrix_") as tmp:
        for name, (cls, data, extra) in MODELS.items():
            for profile in PROFILES:
                torch.manual_seed(0)
                setter = fxquant.default_calibration_qconfig_setter
                if extra is not None:
                    setter = (extra, setter)
                qmodel = fxquant.prepare(cls().eval(), data(2, 0), setter, backend=profile)
                fxquant.calibrate(qmodel, [data(16, s) for s in range(1, 4)], progress=False)
                path = pathlib.Path(tmp) / f"{name}_{profile}.onnx"
                fxquant.export_onnx(qmodel, data(2, 0), path)
                for runtime in RUNTIMES:
                    r = fxquant.verify(qmodel, path, data(args.inputs, 99), runtime)
                    out = r.outputs[0]
                    worst = min((t.identical for t in r.tensors), default=1.0)
                    ops = ", ".join(f"{k} x{v}" for k, v in sorted(r.integer_ops.items()))
                    print(f"| {name} | {profile} | {runtime} | {r.reference} | "
                          f"{100 * out.identical:.2f}% | {out.max_step_diff} | "
                          f"{100 * (out.float32_identical or 0):.2f}% | {100 * worst:.2f}% | "
                          f"{ops} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
