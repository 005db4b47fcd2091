"""Export of prepared models: ONNX QDQ (torch.export + torch.onnx + fxquant's post-passes),
TFLite, and verification in runtimes.

Importing this package does not import onnx / onnxruntime / openvino; they are loaded when an
export or a verification runs.
"""

from .encodings import export_encodings, load_encodings
from .onnx_export import ExportError, ExportResult, ExportWarning, export_onnx
from .quantsim_config import export_quantsim_config
from .tflite_export import TFLiteExport, TFLiteExportWarning, export_tflite
from .verify import TensorDiff, VerifyReport, verify

__all__ = [
    "export_onnx",
    "ExportResult",
    "ExportError",
    "ExportWarning",
    "verify",
    "VerifyReport",
    "TensorDiff",
    "export_encodings",
    "load_encodings",
    "export_quantsim_config",
    "export_tflite",
    "TFLiteExport",
    "TFLiteExportWarning",
]
