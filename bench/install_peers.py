"""Best-effort installation of the quantization toolkits the accuracy benchmark compares with.

``python bench/install_peers.py [--timeout S] [--force]`` (``make bench-deps`` runs it): for
each peer in :data:`PEERS`, first check in a subprocess whether it already imports (then pip is
skipped: idempotent and fast; likewise when it is installed but fails to import); otherwise run
one ``pip install -c constraints.txt <spec>`` with a timeout, then check the import again.  A
peer with a ``warmup`` (NNCF: building its C++ extension) runs it once the import works.  The
constraints pin ``torch==2.13.0``: a peer that needs another torch (or whose dependencies would
replace torch with a CUDA build) fails to install instead of replacing it.  torch.ao (part of
torch) and ONNX Runtime's ``quantize_static`` (the ``dev`` extra) need no installation.

Writes ``bench/results/peers.json`` (atomically) with, per peer: ``installed``, ``version``,
``import_ok`` and ``reason`` (the last lines of pip's error or the import error) when not, and
prints a summary.  Exits 0 even when peers fail: what could not be installed is reported by the
benchmark as a row with the reason.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
RESULT = ROOT / "bench" / "results" / "peers.json"


@dataclass(frozen=True)
class Peer:
    """One peer toolkit.

    Attributes:
        name: short id used by the benchmark (``bench/peers.py``).
        spec: what pip installs.
        module: the module whose import proves it works.
        note: where it comes from / what to expect.
        extra_index: a second index to try when PyPI's package does not install.
        warmup: code run (in a subprocess) once the import works, e.g. to build a C++
            extension that would otherwise be compiled, slowly, inside the first benchmark.
        requires: packages installed with it that its own metadata forgets (its import
            fails without them).
    """

    name: str
    spec: str
    module: str
    note: str = ""
    extra_index: str | None = None
    warmup: str | None = None
    requires: tuple[str, ...] = ()


PEERS: tuple[Peer, ...] = (
    Peer(
        "nncf",
        "nncf",
        "nncf",
        "Intel NNCF (PyPI); its torch backend compiles a CPU extension on first use",
        warmup="import nncf.torch; nncf.torch.force_build_cpu_extensions()",
    ),
    Peer("aimet", "aimet-torch", "aimet_torch", "Qualcomm AIMET (PyPI aimet-torch)"),
    Peer(
        "pytorch_quantization",
        "pytorch-quantization",
        "pytorch_quantization",
        "NVIDIA pytorch-quantization (PyPI has a placeholder sdist; wheels on pypi.nvidia.com)",
        extra_index="https://pypi.nvidia.com",
    ),
    Peer(
        "modelopt",
        "nvidia-modelopt",
        "modelopt.torch.quantization",
        "NVIDIA ModelOpt (PyPI nvidia-modelopt; successor of pytorch-quantization); its "
        "import needs requests and huggingface_hub, which its metadata does not list",
        requires=("requests", "huggingface_hub"),
    ),
)


@dataclass
class PeerStatus:
    """What happened to one peer (one entry of ``peers.json``)."""

    name: str
    spec: str
    module: str
    note: str = ""
    installed: bool = False
    version: str | None = None
    import_ok: bool = False
    pip_ran: bool = False
    seconds: float = 0.0
    reason: str | None = None


def _tail(text: str, lines: int = 12) -> str:
    kept = [ln for ln in text.strip().splitlines() if ln.strip() and "WARNING: Location" not in ln]
    return "\n".join(kept[-lines:])


_ERROR_LINE = re.compile(r"^\s*(ERROR:|error:|[\w.]*(Error|Exception)\b.*:)")


def _reason(text: str, lines: int = 4) -> str:
    """The informative lines of a failure: exception and ``ERROR:`` lines (pip's own "note:
    this error originates from a subprocess" boilerplate dropped), else the tail."""
    hits = []
    for ln in text.splitlines():
        if _ERROR_LINE.match(ln) and "subprocess-exited-with-error" not in ln:
            if ln.strip() not in hits:
                hits.append(ln.strip())
    return "\n".join(hits[-lines:]) if hits else _tail(text, lines)


def _distribution_version(spec: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(spec)
    except metadata.PackageNotFoundError:
        return None


def check_import(module: str, timeout: float = 300) -> tuple[bool, str]:
    """Import ``module`` in a fresh interpreter: ``(ok, version or error tail)``."""
    code = (
        f"import {module} as m, sys; "
        "sys.stdout.write(str(getattr(m, '__version__', '?')))"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return False, f"import {module} timed out after {timeout:.0f} s"
    if proc.returncode == 0:
        return True, proc.stdout.strip()
    return False, _reason(proc.stderr, 3)


def pip_install(
    spec: str, timeout: float, extra_index: str | None = None, requires: tuple[str, ...] = ()
) -> tuple[bool, str]:
    """``pip install -c constraints.txt spec *requires`` with a timeout: ``(ok, output tail)``."""
    cmd = [
        sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
        "-c", str(CONSTRAINTS), spec, *requires,
    ]
    if extra_index:
        cmd += ["--extra-index-url", extra_index]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        out = (err.stderr or b"").decode(errors="replace") if isinstance(err.stderr, bytes) \
            else (err.stderr or "")
        return False, f"pip timed out after {timeout:.0f} s\n{_reason(out)}"
    if proc.returncode == 0:
        return True, _tail(proc.stdout, 2)
    out = proc.stderr + "\n" + proc.stdout
    reason = _reason(out)
    if extra_index:
        net = [m for m in _NETWORK_ERRORS if m in out]
        if net:
            reason = f"{extra_index} unreachable ({net[0]}); then PyPI's package: {reason}"
    return False, reason


_NETWORK_ERRORS = (
    "Network is unreachable", "Temporary failure in name resolution", "NewConnectionError",
    "ConnectTimeout", "Could not fetch URL", "ProxyError", "Max retries exceeded",
)


def warm_up(code: str, timeout: float) -> tuple[bool, str]:
    """Run ``code`` in a fresh interpreter (no time limit inside NNCF's extension loader)."""
    env = {**os.environ, "NNCF_EXTENSION_LOAD_TIMEOUT": "0"}
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return False, f"warm-up timed out after {timeout:.0f} s"
    return proc.returncode == 0, _reason(proc.stderr, 3)


def install(peer: Peer, timeout: float, force: bool = False) -> PeerStatus:
    """Install ``peer`` unless it already imports or its distribution is installed but does not
    import (running pip again cannot fix that; ``force``: run pip anyway)."""
    status = PeerStatus(peer.name, peer.spec, peer.module, note=peer.note)
    t = time.perf_counter()
    ok, out = check_import(peer.module)
    # an installed distribution that does not import is not fixed by running pip again
    # (unless the packages it forgets to require are what is missing)
    if force or (not ok and (_distribution_version(peer.spec) is None or peer.requires)):
        status.pip_ran = True
        pip_ok, pip_out = pip_install(peer.spec, timeout, requires=peer.requires)
        if not pip_ok and peer.extra_index:
            idx_ok, idx_out = pip_install(peer.spec, min(timeout, 120), peer.extra_index,
                                          peer.requires)
            pip_ok = idx_ok
            pip_out += f"\nwith --extra-index-url {peer.extra_index}: {idx_out}"
        ok, out = check_import(peer.module)
        if not pip_ok and not ok:
            status.reason = f"pip install failed: {pip_out}"
    status.version = _distribution_version(peer.spec)
    status.installed = status.version is not None
    status.import_ok = ok
    if ok and peer.warmup:
        ok, warm_out = warm_up(peer.warmup, timeout)
        if not ok:
            status.reason = f"imports, but warm-up ({peer.warmup}) failed: {warm_out}"
    if ok:
        status.reason = None
        if status.version is None:
            status.version = out or None
    elif status.reason is None:
        status.reason = f"import {peer.module} failed: {out}"
        if "torchvision" in out:
            status.reason += (
                "\n(`import torchvision` fails: PyPI's torchvision wheel is a CUDA build whose "
                "_C.so needs libtorch_cuda.so; bench/peers.py runs this peer in a child process "
                "with a torchvision stub)"
            )
    status.seconds = round(time.perf_counter() - t, 1)
    return status


def _write_atomic(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/install_peers.py", description=__doc__.split("\n")[0])
    p.add_argument("--timeout", type=float, default=900, help="seconds per pip call")
    p.add_argument("--force", action="store_true", help="run pip even when the import works")
    p.add_argument("peers", nargs="*", help=f"subset of {[x.name for x in PEERS]}")
    args = p.parse_args(argv)
    chosen = [x for x in PEERS if not args.peers or x.name in args.peers]
    torch_before = _distribution_version("torch")
    statuses = []
    for peer in chosen:
        print(f"-- {peer.name}: {peer.note}", flush=True)
        st = install(peer, args.timeout, args.force)
        statuses.append(st)
        state = "ok" if st.import_ok else "FAILED"
        print(f"   {state} (version {st.version}, pip {'ran' if st.pip_ran else 'skipped'}, "
              f"{st.seconds:.0f} s)", flush=True)
    torch_after = _distribution_version("torch")
    doc = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch": torch_after,
        "torch_unchanged": torch_before == torch_after,
        "builtin": {
            "torch.ao": "part of torch",
            "onnxruntime": _distribution_version("onnxruntime") or "not installed",
        },
        "peers": {st.name: asdict(st) for st in statuses},
    }
    if args.peers and RESULT.exists():  # a subset run keeps the other peers' entries
        try:
            old = json.loads(RESULT.read_text()).get("peers", {})
            doc["peers"] = {**old, **doc["peers"]}
        except (OSError, ValueError):
            pass
    _write_atomic(RESULT, json.dumps(doc, indent=2) + "\n")
    print("\npeer                  import  version     reason")
    for st in statuses:
        reason = st.reason.splitlines()[0][:90] if st.reason else ""
        print(f"{st.name:<21} {'ok' if st.import_ok else 'NO':<7} {st.version or '-':<11} "
              f"{reason}")
    if torch_before != torch_after:
        print(f"WARNING: torch changed from {torch_before} to {torch_after}")
    print(f"wrote {RESULT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
