"""Export of prepared models: ONNX QDQ (torch.export + torch.onnx + fxquant's post-passes) and
verification in runtimes.

Importing this package does not import onnx / onnxruntime / openvino; they are loaded when an
export or a verification runs.
"""

from .encodings import export_encodings, load_encodings
from .integer_sim import IntegerSimulation, integer_simulation
from .onnx_export import ExportError, ExportResult, ExportWarning, export_onnx
from .quantsim_config import export_quantsim_config
from .verify import TensorDiff, VerifyReport, verify

__all__ = [
    "export_onnx",
    "ExportResult",
    "ExportError",
    "ExportWarning",
    "verify",
    "VerifyReport",
    "TensorDiff",
    "integer_simulation",
    "IntegerSimulation",
    "export_encodings",
    "load_encodings",
    "export_quantsim_config",
]
