"""``make bench``: run the benchmark suites and write bench/results/latest.{md,json} + README.

Usage: ``python bench/run.py [suite ...] [--quick]``.  Suites are modules in ``bench/`` with a
``run(quick: bool) -> SuiteResult`` function, listed in :data:`SUITES`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import re
import sys
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import SuiteResult, machine_info, markdown_table  # noqa: E402

SUITES: dict[str, str] = {  # name -> module path
    "kernels": "bench.kernels",
    "cost": "bench.cost",
    "accuracy": "bench.accuracy",
    "coverage": "bench.coverage",
    "deploy": "bench.deploy",
    "ptq": "bench.ptq",
}
RESULTS = ROOT / "bench" / "results"
README_MARK = ("<!-- bench-table -->", "<!-- /bench-table -->")


def _write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__)
    p.add_argument("suites", nargs="*", help=f"subset of {sorted(SUITES)} (default: all)")
    p.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    args = p.parse_args(argv)
    names = args.suites or list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        p.error(f"unknown suite(s) {unknown}; choose from {sorted(SUITES)}")
    info = machine_info()
    results: list[SuiteResult] = []
    failed = []
    for name in names:
        t = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            res = importlib.import_module(SUITES[name]).run(quick=args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            res = SuiteResult(name, name, ["error"], [{"error": "suite failed; see log"}])
        res.notes.append(f"suite time: {time.perf_counter() - t:.0f} s")
        results.append(res)
        print(markdown_table(res), flush=True)
    header = ", ".join(f"{k} {v}" for k, v in info.items())
    md = [f"# fxquant benchmarks\n\n{header}\n"]
    for r in results:
        md += [f"## {r.title}\n", markdown_table(r), ""] + [f"- {n}" for n in r.notes] + [""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    _write_atomic(RESULTS / "latest.md", "\n".join(md))
    _write_atomic(
        RESULTS / "latest.json",
        json.dumps(
            {"machine": info, "suites": [r.__dict__ for r in results]}, indent=2, default=str
        ),
    )
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_MARK[0] in text and not args.quick and not args.suites:
        block = "\n".join(md[1:])
        text = re.sub(
            re.escape(README_MARK[0]) + r".*?" + re.escape(README_MARK[1]),
            f"{README_MARK[0]}\n{header}\n\n{block}\n{README_MARK[1]}",
            text,
            flags=re.S,
        )
        _write_atomic(readme, text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
