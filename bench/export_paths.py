"""Export paths compared: the torch.export + torch.onnx path against the old fx emitter.

For every model of :mod:`bench.export_zoo` (issue 12's families, random weights): prepare +
calibrate with the ``onnxruntime`` profile, ``export_onnx`` (time), ``verify`` in ONNX Runtime
(output codes identical to the simulation, max step difference); with ``--openvino`` also the
``openvino`` profile verified in OpenVINO.  The old path runs in a second process from a source
tree of the commit before the rewrite (``--old-src``, e.g. ``git archive 937cc01 src | tar -x
-C /tmp/old``); its rows are skipped when no tree is given.  Prints a markdown table, the
coverage counts and the lines of code of each path (the design numbers of docs/design.md §5).

    python bench/export_paths.py --old-src /tmp/old/src [--quick] [--openvino]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# run as a script, bench/ is sys.path[0]: its kernels.py would shadow the `kernels` package
# transformers imports
sys.path = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OLD_REV = "937cc01"
OLD_FILES = ("onnx_export.py", "onnx_writer.py", "onnx_ops.py", "onnx_layers.py",
             "onnx_emitters.py", "onnx_graph.py", "onnx_fallback.py", "onnx_qdq.py")
NEW_FILES = ("onnx_export.py", "onnx_lower.py", "onnx_passes.py", "onnx_quantizers.py",
             "onnx_ir_utils.py", "onnx_check.py", "quantizers.py", "program.py")


class _Timeout(Exception):
    pass


def _alarm(_sig: int, _frame: Any) -> None:
    raise _Timeout()


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:220]}"


def _far(d: Any) -> float:
    """Fraction of elements more than 2 steps off (the self-check's bar is 1%)."""
    total = sum(d.histogram.values()) or 1
    return sum(n for k, n in d.histogram.items() if abs(k) > 2) / total


def _run_one(name: str, path_kind: str, folder: str, openvino: bool) -> dict[str, Any]:
    import torch

    import fxquant
    from bench.export_zoo import EXPORT_MODELS

    family, build, batch = EXPORT_MODELS[name]
    row: dict[str, Any] = {"model": name, "family": family, "path": path_kind}
    torch.manual_seed(0)
    model = build().eval()
    example, calib, data = batch(2), [batch(4) for _ in range(2)], batch(8)
    for backend, runtime in (("onnxruntime", "onnxruntime"),) + (
            (("openvino", "openvino"),) if openvino else ()):
        key = "" if backend == "onnxruntime" else "ov_"
        try:
            q = fxquant.prepare(model, example, fxquant.default_calibration_qconfig_setter,
                                backend=backend)
            fxquant.calibrate(q, calib, progress=False)
        except Exception as err:
            row[f"{key}prepare"] = _short(err)
            continue
        row[f"{key}prepare"] = "ok"
        target = os.path.join(folder, f"{path_kind}_{backend}.onnx")
        t0 = time.perf_counter()
        try:
            res = fxquant.export_onnx(q, example, target)
            check = getattr(res, "check", None)
            if check is not None:  # the self-check's numbers (new path)
                outs = [o for o in check.outputs if o.max_step_diff is not None]
                if outs:
                    row[f"{key}check_identical"] = round(100 * min(o.identical for o in outs), 2)
                    row[f"{key}check_far"] = round(100 * max(_far(o) for o in outs), 3)
        except Exception as err:
            row[f"{key}export"] = _short(err)
            row[f"{key}export_s"] = round(time.perf_counter() - t0, 2)
            continue
        row[f"{key}export"] = "ok"
        row[f"{key}export_s"] = round(time.perf_counter() - t0, 2)
        try:
            rep = fxquant.verify(q, target, data, runtime, tensors=False)
            outs = [o for o in rep.outputs if o.max_step_diff is not None] or list(rep.outputs)
            row[f"{key}identical"] = round(100 * min(o.identical for o in outs), 2)
            row[f"{key}max_steps"] = max((o.max_step_diff or 0) for o in outs)
        except Exception as err:
            row[f"{key}verify"] = _short(err)
    return row


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _alarm)
    with open(args.out, "a") as f, tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            signal.alarm(args.limit)
            try:
                row = _run_one(name, args.path, folder, args.openvino)
            except _Timeout:
                row = {"model": name, "path": args.path, "export": f"timeout {args.limit}s"}
            except Exception as err:  # a bug in the bench, not in an export
                row = {"model": name, "path": args.path, "export": _short(err),
                       "trace": traceback.format_exc()[-800:]}
            finally:
                signal.alarm(0)
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(json.dumps(row), flush=True)


def _loc(rev: str | None, files: tuple[str, ...]) -> int:
    total = 0
    for name in files:
        rel = f"src/fxquant/export/{name}"
        if rev is None:
            text = (ROOT / rel).read_text()
        else:
            text = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=ROOT, check=True,
                                  capture_output=True, text=True).stdout
        total += sum(1 for line in text.splitlines() if line.strip())
    return total


def _cell(row: dict[str, Any] | None, key: str = "") -> str:
    if row is None:
        return "-"
    status = row.get(f"{key}export") or row.get(f"{key}prepare", "?")
    if row.get(f"{key}prepare", "ok") != "ok":
        return f"prepare fails: {row[f'{key}prepare'][:70]}"
    if status != "ok":
        return f"fails: {status[:90]}"
    if f"{key}identical" in row:
        return (f"ok {row[f'{key}export_s']}s, {row[f'{key}identical']}% identical, "
                f"max {row[f'{key}max_steps']} step(s)")
    return f"ok {row[f'{key}export_s']}s (verify: {row.get(f'{key}verify', '?')[:60]})"


def table(rows: list[dict[str, Any]], openvino: bool) -> str:
    from bench.export_zoo import EXPORT_MODELS

    by = {(r["model"], r["path"]): r for r in rows}
    head = "| model | family | old fx emitter (ORT) | torch.export + torch.onnx (ORT) |"
    sep = "|---|---|---|---|"
    if openvino:
        head += " new, openvino profile (OpenVINO) |"
        sep += "---|"
    lines = [head, sep]
    for name, (family, _, _) in EXPORT_MODELS.items():
        if (name, "new") not in by and (name, "old") not in by:
            continue
        new = by.get((name, "new"))
        line = f"| {name} | {family} | {_cell(by.get((name, 'old')))} | {_cell(new)} |"
        if openvino:
            line += f" {_cell(new, 'ov_')} |"
        lines.append(line)
    ok = {p: sum(1 for r in rows if r["path"] == p and r.get("export") == "ok")
          for p in ("old", "new")}
    n = {p: sum(1 for r in rows if r["path"] == p) for p in ("old", "new")}
    times = sorted(r["export_s"] for r in rows if r["path"] == "new" and r.get("export") == "ok")
    lines.append("")
    lines.append(f"- exports: old path {ok['old']}/{n['old']}, new path {ok['new']}/{n['new']}")
    if times:
        lines.append(f"- new path export time (incl. self-check): median {times[len(times) // 2]}"
                     f" s, max {times[-1]} s")
    lines.append(f"- lines of code (non-blank, src/fxquant/export): old emitter "
                 f"{_loc(OLD_REV, OLD_FILES)} ({OLD_REV}), new path {_loc(None, NEW_FILES)}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path", default="new", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    p.add_argument("--models", default="", help="comma-separated rows (default: all)")
    p.add_argument("--quick", action="store_true", help="a representative subset")
    p.add_argument("--old-src", default="", help="src/ of the tree before the rewrite")
    p.add_argument("--openvino", action="store_true", help="also the openvino profile")
    p.add_argument("--limit", type=int, default=600, help="seconds per model and path")
    p.add_argument("--results", default="", help="jsonl to append to / read (default: temp)")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    from bench.export_zoo import EXPORT_MODELS, QUICK

    names = args.models.split(",") if args.models else list(QUICK if args.quick else
                                                             EXPORT_MODELS)
    out = args.results or os.path.join(tempfile.mkdtemp(prefix="export_paths_"), "rows.jsonl")
    t0 = time.time()
    for kind, src in (("old", args.old_src), ("new", str(ROOT / "src"))):
        if not src:
            continue
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(ROOT)])}
        cmd = [sys.executable, __file__, "--worker", "--path", kind, "--out", out,
               "--models", ",".join(names), "--limit", str(args.limit)]
        if args.openvino and kind == "new":
            cmd.append("--openvino")
        subprocess.run(cmd, env=env, check=False)
    rows = [json.loads(line) for line in open(out)] if os.path.exists(out) else []
    print(table(rows, args.openvino))
    load = os.getloadavg()[0]
    print(f"- rows in {out}; {time.time() - t0:.0f} s; 1 torch thread; load average {load:.1f}")


if __name__ == "__main__":
    main()
