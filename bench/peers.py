"""Thin adapters for the peer quantization toolkits, each with its recommended W8A8 PTQ defaults.

Every adapter takes the float model, an example input and the calibration batches (a list of
input tensors) and returns a :class:`PeerRun`: a quantized model callable on torch tensors (an
``nn.Module`` returning logits) or the error that stopped it -- adapters never raise.

* :func:`torch_ao_ptq` -- torch.ao FX: ``prepare_fx`` with ``get_default_qconfig_mapping("x86")``
  (histogram activations with reduce_range, per-channel symmetric int8 weights), calibration,
  then both ``convert_to_reference_fx`` (the fake-quant simulation: quantize/dequantize around
  float ops) and ``convert_fx`` (int8 on the x86 engine's kernels).
* :func:`onnxruntime_ptq` -- ``torch.onnx.export``, ONNX Runtime's ``quant_pre_process``, then
  ``quantize_static`` (QDQ, per-channel, U8S8, min-max), run in an ORT session.
* :func:`nncf_ptq` -- ``nncf.quantize(model, nncf.Dataset(calib))`` with its defaults (preset
  performance: symmetric int8, per-channel weights, min-max ranges, fast bias correction).
* :func:`aimet_ptq` -- AIMET's PTQ recipe: ``fold_all_batch_norms``, ``QuantizationSimModel`` with
  its default config (per-tensor symmetric weights, asymmetric activations, min-max), then
  ``compute_encodings``; ``per_channel=True`` uses AIMET's bundled per-channel config.
* :func:`aimet_adaround_w4a8` -- AIMET AdaRound at 4-bit weights (``Adaround.apply_adaround``
  with its default TF-enhanced scheme), QuantSim W4A8 with the frozen AdaRound encodings.
* :func:`pytorch_quantization_ptq` -- NVIDIA pytorch-quantization: ``quant_modules.initialize``,
  max calibrator (its default), ``load_calib_amax``.
* :func:`torch_ao_qat` -- torch.ao FX QAT: ``prepare_qat_fx`` with
  ``get_default_qat_qconfig_mapping("x86")``, a training callback, ``convert_fx``.

NNCF, AIMET and pytorch-quantization patch torch globally (operator hooks, module
replacement), so they run in a spawned child process: the model and the batches are sent
there, and the returned module forwards its inputs to the child (:class:`RemoteModule`).  The
child of AIMET puts a stub ``torchvision`` first on its path when the installed torchvision
cannot import (PyPI's torchvision wheel is a CUDA build whose ``_C.so`` needs
``libtorch_cuda.so``; AIMET imports torchvision only for data-set helpers) and says so in the
note.  Installation status comes from ``bench/results/peers.json`` (``bench/install_peers.py``).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import multiprocessing
import os
import pathlib
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "PeerRun",
    "RemoteModule",
    "OnnxModule",
    "peer_status",
    "torch_ao_ptq",
    "torch_ao_qat",
    "onnxruntime_ptq",
    "nncf_ptq",
    "aimet_ptq",
    "aimet_adaround_w4a8",
    "pytorch_quantization_ptq",
]

PEERS_JSON = pathlib.Path(__file__).resolve().parent / "results" / "peers.json"
NNCF_EXTENSION_TIMEOUT = "900"  # seconds: the first call compiles NNCF's CPU extension


@dataclass
class PeerRun:
    """What an adapter produced: ``model`` (logits from torch inputs) or ``error``, a ``note``
    (what was used), and resources to free with :meth:`close`."""

    model: nn.Module | None = None
    error: str | None = None
    note: str = ""
    _cleanup: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def close(self) -> None:
        for fn in self._cleanup:
            with contextlib.suppress(Exception):
                fn()
        self._cleanup.clear()


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"


def peer_status(name: str) -> dict[str, Any] | None:
    """The ``peers.json`` entry of ``name`` (``nncf``, ``aimet``, ``pytorch_quantization``)."""
    try:
        return json.loads(PEERS_JSON.read_text())["peers"].get(name)
    except (OSError, ValueError, KeyError):
        return None


def _not_available(name: str, module: str) -> str | None:
    """Why peer ``name`` cannot run here, or ``None`` when its module is installed."""
    if importlib.util.find_spec(module) is not None:
        return None
    st = peer_status(name)
    reason = (st or {}).get("reason") or "not installed (run bench/install_peers.py)"
    return f"not installed: {' / '.join(reason.strip().splitlines())}"[:300]


# -- torch.ao -------------------------------------------------------------------------------------
@contextlib.contextmanager
def _engine(name: str) -> Iterator[None]:
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def torch_ao_ptq(model: nn.Module, example: Tensor, calib: list[Tensor]) -> dict[str, PeerRun]:
    """torch.ao FX PTQ with ``get_default_qconfig_mapping("x86")``: ``{"reference": simulated
    model, "int8": x86 int8 model}`` (each a PeerRun)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import (
        convert_fx,
        convert_to_reference_fx,
        prepare_fx,
    )

    note = "get_default_qconfig_mapping('x86'): histogram act (reduce_range), per-channel W"
    try:
        with _engine("x86"), torch.no_grad():
            prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"),
                                  (example,))
            for x in calib:
                prepared(x)
    except Exception as err:
        e = _error(err)
        return {"reference": PeerRun(error=e), "int8": PeerRun(error=e)}
    out = {}
    for key, conv in (("reference", convert_to_reference_fx), ("int8", convert_fx)):
        try:
            with _engine("x86"):
                q = conv(copy.deepcopy(prepared))
            out[key] = PeerRun(_EngineModule(q, "x86") if key == "int8" else q, note=note)
        except Exception as err:
            out[key] = PeerRun(error=_error(err))
    return out


class _EngineModule(nn.Module):
    """Runs ``module`` with ``torch.backends.quantized.engine`` set to ``engine``."""

    def __init__(self, module: nn.Module, engine: str) -> None:
        super().__init__()
        self.module, self.engine = module, engine

    def forward(self, x: Tensor) -> Tensor:
        with _engine(self.engine):
            return self.module(x)


def torch_ao_qat(
    model: nn.Module, example: Tensor, train: Callable[[nn.Module], None]
) -> dict[str, PeerRun]:
    """torch.ao FX QAT with ``get_default_qat_qconfig_mapping("x86")``: ``prepare_qat_fx`` on a
    copy in train mode, ``train(prepared)`` (the caller's loop), then ``{"fake-quant": the
    prepared model in eval mode, "int8": convert_fx on the x86 engine}``."""
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    note = "get_default_qat_qconfig_mapping('x86'), prepare_qat_fx (fused conv-bn QAT)"
    try:
        with _engine("x86"):
            prepared = prepare_qat_fx(copy.deepcopy(model).train(),
                                      get_default_qat_qconfig_mapping("x86"), (example,))
            train(prepared)
            prepared.eval()
    except Exception as err:
        e = _error(err)
        return {"fake-quant": PeerRun(error=e), "int8": PeerRun(error=e)}
    out = {"fake-quant": PeerRun(prepared, note=note)}
    try:
        with _engine("x86"):
            out["int8"] = PeerRun(_EngineModule(convert_fx(copy.deepcopy(prepared)), "x86"),
                                  note=note)
    except Exception as err:
        out["int8"] = PeerRun(error=_error(err))
    return out


# -- ONNX Runtime ---------------------------------------------------------------------------------
class OnnxModule(nn.Module):
    """An ONNX file run in an ONNX Runtime CPU session, as a module (torch in, torch out)."""

    def __init__(self, path: str, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or torch.get_num_threads()
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: Tensor) -> Tensor:
        x = x.detach().contiguous().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])


def _export_float_onnx(model: nn.Module, example: Tensor, path: str) -> str:
    """``torch.onnx.export`` (its default dynamo exporter, dynamic batch); the TorchScript
    exporter if that fails.  Returns which exporter worked."""
    model = copy.deepcopy(model).eval()
    try:
        batch = torch.export.Dim("batch")
        torch.onnx.export(model, (example,), path, dynamo=True, input_names=["x"],
                          dynamic_shapes=({0: batch},), external_data=False, verbose=False)
        return "dynamo"
    except Exception:
        torch.onnx.export(model, (example,), path, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
        return "torchscript"


def onnxruntime_ptq(model: nn.Module, example: Tensor, calib: list[Tensor]) -> PeerRun:
    """``torch.onnx.export`` -> ``quant_pre_process`` -> ``quantize_static`` (QDQ, per-channel,
    U8S8, min-max) -> ORT session."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as err:
        return PeerRun(error=f"not installed: {_error(err)}")

    tmp = tempfile.mkdtemp(prefix="peers_ort_")
    run = PeerRun(_cleanup=[lambda: shutil.rmtree(tmp, ignore_errors=True)])
    try:
        flt, pre, out = (os.path.join(tmp, f) for f in ("float.onnx", "pre.onnx", "int8.onnx"))
        exporter = _export_float_onnx(model, example, flt)
        try:
            quant_pre_process(flt, pre)
            src, pre_note = pre, "quant_pre_process"
        except Exception as err:
            src, pre_note = flt, f"quant_pre_process failed ({type(err).__name__})"

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = iter([{"x": x.numpy()} for x in calib])

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._it, None)

        logging.disable(logging.WARNING)
        try:
            quantize_static(src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        finally:
            logging.disable(logging.NOTSET)
        run.model = OnnxModule(out)
        run.note = f"torch.onnx.export ({exporter}), {pre_note}, QDQ per-channel U8S8 MinMax"
    except Exception as err:
        run.error = _error(err)
    return run


# -- peers in a child process ---------------------------------------------------------------------
_TORCHVISION_STUB = '''"""Stand-in for a torchvision that cannot import (bench/peers.py)."""
import sys
import types


def _missing(*args, **kwargs):
    raise RuntimeError("torchvision is a stub here: the installed wheel cannot load")


class _Missing:
    def __init__(self, *args, **kwargs):
        _missing()


datasets = types.ModuleType("torchvision.datasets")
transforms = types.ModuleType("torchvision.transforms")
transforms.Resize = type("Resize", (_Missing,), {})
ops = types.ModuleType("torchvision.ops")
ops.RoIPool = type("RoIPool", (_Missing,), {})
ops.roi_align = ops.nms = _missing
sys.modules.update({"torchvision.datasets": datasets, "torchvision.transforms": transforms,
                    "torchvision.ops": ops})
__version__ = "0+stub"
'''


def _import_with_torchvision_fallback(module: str) -> str:
    """Import ``module``; if that fails because torchvision cannot import, retry with the stub
    torchvision on the path.  Returns a note ('' or what was stubbed)."""
    try:
        importlib.import_module(module)
        return ""
    except Exception as err:
        try:
            import torchvision  # noqa: F401
        except Exception as tv_err:
            why = _error(tv_err)
        else:
            raise err from None
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    stub = os.path.join(tempfile.gettempdir(), f"bench_peers_tvstub_{os.getuid()}")
    os.makedirs(os.path.join(stub, "torchvision"), exist_ok=True)
    init = os.path.join(stub, "torchvision", "__init__.py")
    with open(f"{init}.{os.getpid()}", "w") as f:  # one fixed folder, replaced atomically
        f.write(_TORCHVISION_STUB)
    os.replace(f"{init}.{os.getpid()}", init)
    sys.path.insert(0, stub)
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        del sys.modules[name]
    importlib.import_module(module)
    return f"torchvision stubbed in the child (the installed one fails: {why})"[:120]


def _child_main(conn, builder: str, args: tuple, threads: int) -> None:
    """Child process: build the quantized model with ``builder(*args)``, then answer forward
    requests (``Tensor`` in, logits out) until ``None`` arrives."""
    torch.set_num_threads(threads)
    logging.disable(logging.WARNING)
    try:
        model, note = globals()[builder](*args)
        model.eval()
        conn.send(("ok", note))
    except BaseException as err:
        tb = traceback.format_exc().strip().splitlines()
        conn.send(("error", f"{_error(err)} [{tb[-3].strip() if len(tb) > 2 else ''}]"[:400]))
        return
    with torch.no_grad():
        while True:
            x = conn.recv()
            if x is None:
                return
            try:
                out = model(x)  # may be a peer's tensor subclass: send a plain tensor
                conn.send(("ok", out.detach().as_subclass(torch.Tensor).float().clone()))
            except BaseException as err:
                conn.send(("error", _error(err)))


class RemoteModule(nn.Module):
    """A model living in a child process: ``forward`` sends the input there and returns the
    logits it sends back."""

    def __init__(self, conn, process) -> None:
        super().__init__()
        self._conn, self._process = conn, process

    def forward(self, x: Tensor) -> Tensor:
        self._conn.send(x.detach())
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(value)
        return value

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.send(None)
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()


def _in_child(builder: str, *args: Any, timeout: float = 1800) -> PeerRun:
    """Run ``builder`` (a function of this module) in a spawned process; see RemoteModule."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    env = {"NNCF_EXTENSION_LOAD_TIMEOUT": NNCF_EXTENSION_TIMEOUT}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        proc = ctx.Process(target=_child_main, args=(child, builder, args,
                                                     torch.get_num_threads()), daemon=True)
        proc.start()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    child.close()
    remote = RemoteModule(parent, proc)
    try:
        if not parent.poll(timeout):
            remote.close()
            return PeerRun(error=f"timed out after {timeout:.0f} s")
        status, value = parent.recv()
    except (EOFError, OSError) as err:
        remote.close()
        return PeerRun(error=f"child process died ({type(err).__name__}, exit {proc.exitcode})")
    if status != "ok":
        remote.close()
        return PeerRun(error=value)
    return PeerRun(remote, note=value, _cleanup=[remote.close])


# builders: run inside the child, return (model, note)
def _build_nncf(model: nn.Module, example: Tensor, calib: list[Tensor]) -> tuple[nn.Module, str]:
    import nncf

    q = nncf.quantize(model.eval(), nncf.Dataset(calib), subset_size=sum(len(x) for x in calib))
    return q, f"nncf {nncf.__version__} quantize() defaults (preset performance), subset = calib"


def _build_aimet(
    model: nn.Module, example: Tensor, calib: list[Tensor], per_channel: bool
) -> tuple[nn.Module, str]:
    stub = _import_with_torchvision_fallback("aimet_torch")
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.quantsim import QuantizationSimModel

    model = model.eval()
    fold_all_batch_norms(model, input_shapes=tuple(example.shape))
    config = _aimet_config(per_channel)
    sim = QuantizationSimModel(model, dummy_input=example, config_file=config)
    sim.compute_encodings(_aimet_forward, calib)
    cfg = "per-channel config" if per_channel else "default config"
    return sim.model, "; ".join(
        x for x in (f"BN fold + QuantSim {cfg}, min-max, compute_encodings", stub) if x)


def _aimet_config(per_channel: bool) -> str | None:
    if not per_channel:
        return None
    import aimet_torch

    root = pathlib.Path(aimet_torch.__file__).parent
    return str(root / "common" / "quantsim_config" / "default_config_per_channel.json")


def _aimet_forward(model: nn.Module, batches: list[Tensor]) -> None:
    with torch.no_grad():
        for x in batches:
            model(x)


def _build_aimet_adaround(
    model: nn.Module, example: Tensor, calib: list[Tensor], iterations: int
) -> tuple[nn.Module, str]:
    stub = _import_with_torchvision_fallback("aimet_torch")
    from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.quantsim import QuantizationSimModel

    model = model.eval()
    fold_all_batch_norms(model, input_shapes=tuple(example.shape))
    tmp = tempfile.mkdtemp(prefix="peers_aimet_")
    try:
        params = AdaroundParameters(data_loader=calib, num_batches=len(calib),
                                    default_num_iterations=iterations)
        ada = Adaround.apply_adaround(model, example, params, path=tmp, filename_prefix="ada",
                                      default_param_bw=4)
        sim = QuantizationSimModel(ada, dummy_input=example, default_param_bw=4,
                                   default_output_bw=8,
                                   quant_scheme=QuantScheme.post_training_tf_enhanced)
        sim.set_and_freeze_param_encodings(os.path.join(tmp, "ada.encodings"))
        sim.compute_encodings(_aimet_forward, calib)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sim.model, "; ".join(x for x in (
        f"BN fold + Adaround.apply_adaround W4 ({iterations} iters/layer, TF-enhanced), "
        "QuantSim W4A8 default config", stub) if x)


def _build_pytorch_quantization(
    model: nn.Module, example: Tensor, calib: list[Tensor]
) -> tuple[nn.Module, str]:
    from pytorch_quantization import nn as quant_nn
    from pytorch_quantization import quant_modules

    quant_modules.initialize()
    qmodel = copy.deepcopy(model)  # module classes were replaced: rebuild through pickling
    qmodel = _requantize_modules(qmodel)
    qmodel.eval()
    quantizers = [m for m in qmodel.modules() if isinstance(m, quant_nn.TensorQuantizer)]
    for q in quantizers:
        if q._calibrator is not None:
            q.disable_quant()
            q.enable_calib()
        else:
            q.disable()
    with torch.no_grad():
        for x in calib:
            qmodel(x)
    for q in quantizers:
        if q._calibrator is not None:
            q.load_calib_amax()
            q.enable_quant()
            q.disable_calib()
        else:
            q.enable()
    return qmodel, "quant_modules.initialize, max calibrator (defaults)"


def _requantize_modules(model: nn.Module) -> nn.Module:
    """Swap nn layers for their pytorch-quantization counterparts, keeping the weights (what
    ``quant_modules.initialize`` does for models built after it)."""
    from pytorch_quantization import nn as quant_nn

    pairs = {nn.Conv2d: quant_nn.QuantConv2d, nn.Linear: quant_nn.QuantLinear}
    for name, child in list(model.named_children()):
        new_cls = pairs.get(type(child))
        if new_cls is not None:
            q = new_cls.__new__(new_cls)
            q.__dict__.update(child.__dict__)
            q.__class__ = new_cls
            q.init_quantizer(new_cls.default_quant_desc_input, new_cls.default_quant_desc_weight)
            setattr(model, name, q)
        else:
            _requantize_modules(child)
    return model


# -- public adapters of the child-process peers ---------------------------------------------------
def nncf_ptq(model: nn.Module, example: Tensor, calib: list[Tensor]) -> PeerRun:
    """``nncf.quantize`` with its defaults (torch backend), in a child process."""
    why = _not_available("nncf", "nncf")
    if why:
        return PeerRun(error=why)
    return _in_child("_build_nncf", copy.deepcopy(model), example, calib)


def aimet_ptq(
    model: nn.Module, example: Tensor, calib: list[Tensor], *, per_channel: bool = False
) -> PeerRun:
    """AIMET BN fold + ``QuantizationSimModel`` (default config) + ``compute_encodings``."""
    why = _not_available("aimet", "aimet_torch")
    if why:
        return PeerRun(error=why)
    return _in_child("_build_aimet", copy.deepcopy(model), example, calib, per_channel)


def aimet_adaround_w4a8(
    model: nn.Module, example: Tensor, calib: list[Tensor], iterations: int
) -> PeerRun:
    """AIMET AdaRound with 4-bit weights, then QuantSim W4A8 with the AdaRound encodings."""
    why = _not_available("aimet", "aimet_torch")
    if why:
        return PeerRun(error=why)
    return _in_child("_build_aimet_adaround", copy.deepcopy(model), example, calib, iterations)


def pytorch_quantization_ptq(model: nn.Module, example: Tensor, calib: list[Tensor]) -> PeerRun:
    """NVIDIA pytorch-quantization with its defaults (max calibration), in a child process."""
    why = _not_available("pytorch_quantization", "pytorch_quantization")
    if why:
        return PeerRun(error=why)
    return _in_child("_build_pytorch_quantization", copy.deepcopy(model), example, calib)
