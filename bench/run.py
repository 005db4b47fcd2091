"""``make bench``: run the benchmark suites and write bench/results/latest.{md,json} + README.

Usage: ``python bench/run.py [suite ...] [--quick]``.  Suites are modules in ``bench/`` with a
``run(quick: bool) -> SuiteResult`` function, listed in :data:`SUITES`.

Each suite's result is saved on its own (``bench/results/suites/<name>.json``, with the machine,
versions and date of its run); ``latest.md`` / ``latest.json`` and the README table are rebuilt
from the latest saved result of every suite, so re-running one suite updates its section only.
``--quick`` runs go to ``bench/results/quick/`` and ``quick.md`` and never touch the README.
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
# run as a script, bench/ itself is sys.path[0]: its modules would shadow installed packages of
# the same name (bench/kernels.py vs the `kernels` package transformers imports)
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import SuiteResult, machine_info, markdown_table  # noqa: E402

SUITES: dict[str, str] = {  # name -> module path
    "kernels": "bench.kernels",
    "cost": "bench.cost",
    "deploy": "bench.deploy",
    "accuracy": "bench.accuracy",
    "coverage": "bench.coverage",
    "ptq": "bench.ptq",
    "simulation": "bench.simulation",
    "memory": "bench.memory",
    "distributed": "bench.distributed",
}
RESULTS = ROOT / "bench" / "results"
README_MARK = ("<!-- bench-table -->", "<!-- /bench-table -->")


def _write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _suite_path(name: str, quick: bool) -> pathlib.Path:
    return RESULTS / ("quick" if quick else "suites") / f"{name}.json"


def _load_suite(path: pathlib.Path) -> tuple[dict, SuiteResult] | None:
    try:
        data = json.loads(path.read_text())
        return data["machine"], SuiteResult(**data["suite"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


README_MAX_ROWS = 30
"""A suite table longer than this appears in README as its notes only (full table in latest.md)."""
README_FULL_TABLES = frozenset({"coverage"})
"""Suites whose table README shows in full whatever its length (issue 12: the coverage table)."""


def _report(names: list[str], quick: bool, summary: bool = False) -> tuple[list[str], list[dict]]:
    """Markdown lines and JSON entries of the latest saved result of every suite in ``names``.

    ``summary``: tables longer than :data:`README_MAX_ROWS` rows are replaced by a pointer to
    ``bench/results/latest.md`` (their notes, with every target's verdict, stay).
    """
    md: list[str] = []
    entries: list[dict] = []
    for name in names:
        loaded = _load_suite(_suite_path(name, quick))
        if loaded is None:
            md += [f"### {name}\n", "(not run yet)", ""]
            continue
        info, r = loaded
        header = ", ".join(f"{k} {v}" for k, v in info.items())
        table = markdown_table(r)
        if summary and len(r.rows) > README_MAX_ROWS and name not in README_FULL_TABLES:
            table = (f"({len(r.rows)} rows: full table in "
                     "[bench/results/latest.md](bench/results/latest.md))")
        md += [f"### {r.title}\n", f"_{header}_\n", table, ""]
        md += [f"- {n}" for n in r.notes] + [""]
        entries.append({"machine": info, "suite": r.__dict__})
    return md, entries


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__)
    p.add_argument("suites", nargs="*", help=f"subset of {sorted(SUITES)} (default: all)")
    p.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    args = p.parse_args(argv)
    names = args.suites or list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        p.error(f"unknown suite(s) {unknown}; choose from {sorted(SUITES)}")
    failed = []
    for name in names:
        t = time.perf_counter()
        info = machine_info()
        print(f"== {name}", flush=True)
        try:
            res = importlib.import_module(SUITES[name]).run(quick=args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            res = SuiteResult(name, name, ["error"], [{"error": "suite failed; see log"}])
        res.notes.append(f"suite time: {time.perf_counter() - t:.0f} s")
        print(markdown_table(res), flush=True)
        path = _suite_path(name, args.quick)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, json.dumps({"machine": info, "suite": res.__dict__}, indent=2,
                                       default=str))
    # the report holds the latest result of every suite (each with its own machine line)
    md, entries = _report(list(SUITES), args.quick)
    title = "# fxquant benchmarks" + (" (quick smoke run: sizes too small for claims)"
                                      if args.quick else "")
    lines = [f"{title}\n", *md]
    stem = "quick" if args.quick else "latest"
    _write_atomic(RESULTS / f"{stem}.md", "\n".join(lines))
    _write_atomic(RESULTS / f"{stem}.json", json.dumps({"suites": entries}, indent=2,
                                                       default=str))
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_MARK[0] in text and not args.quick:
        block = "\n".join(_report(list(SUITES), False, summary=True)[0])
        text = re.sub(
            re.escape(README_MARK[0]) + r".*?" + re.escape(README_MARK[1]),
            lambda _m: f"{README_MARK[0]}\n{block}\n{README_MARK[1]}",
            text,
            flags=re.S,
        )
        _write_atomic(readme, text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
