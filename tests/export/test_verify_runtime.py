"""verify(reference="runtime"): the runtime simulation as the reference, and the kernel check.

The reference is the model in eval mode with the runtime's arithmetic (the profile's fused-kernel
table); verify compares the table with the kernels ORT really fused and warns where they differ.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

import fxquant
from fxquant.backends import ORT_KERNELS, PROFILES, KernelOp
from fxquant.export import export_onnx, verify
from fxquant.export.verify import KernelMismatchWarning

from . import models as M

pytest.importorskip("onnxruntime")


def _resnet(backend, tmp_path):
    gen = torch.Generator().manual_seed(10)
    example = torch.randn(2, 3, 16, 16, generator=gen)
    qmodel = fxquant.prepare(M.ResNetSmall().eval(), example,
                             fxquant.default_calibration_qconfig_setter, backend=backend)
    fxquant.calibrate(qmodel, [torch.randn(16, 3, 16, 16, generator=gen) for _ in range(2)],
                      progress=False)
    path = export_onnx(qmodel, example, tmp_path / "r.onnx").path
    return qmodel, path, torch.randn(16, 3, 16, 16, generator=gen)


def test_reference_is_the_runtime_simulation(tmp_path):
    qmodel, path, x = _resnet("onnxruntime", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelMismatchWarning)
        report = verify(qmodel, path, x)
        legacy = verify(qmodel, path, x, reference="integer", tensors=False)
    assert report.reference == legacy.reference == "runtime"
    assert report.emulated == legacy.emulated == {
        "QGemm": 1, "QLinearAdd": 3, "QLinearConv": 8, "QLinearGlobalAveragePool": 1}
    assert report.not_emulated == {} and report.kernel_mismatch == {}
    assert report.outputs[0].identical == 1.0
    text = str(report)
    assert "ran in:      onnxruntime 1." in text and "reference: runtime" in text
    with torch.no_grad():  # the reference is exactly what qmodel.eval() computes
        out = qmodel.eval()(x)
    exact = verify(qmodel, path, x, reference="exact", tensors=False)
    assert exact.reference == "exact" and exact.emulated == {}
    assert out.shape == (16, 10)


def test_a_table_that_misses_a_fusion_is_reported(tmp_path):
    """A profile whose table lacks QLinearAdd: ORT still fuses the adds; verify says where the
    simulation computes float ops instead, and warns."""
    no_add = dataclasses.replace(PROFILES["onnxruntime"], name="ort_without_add", kernels=tuple(
        k for k in ORT_KERNELS if k.op is not KernelOp.ADD))
    qmodel, path, x = _resnet(no_add, tmp_path)
    with pytest.warns(KernelMismatchWarning, match="3 tensor"):
        report = verify(qmodel, path, x, tensors=False)
    assert set(report.kernel_mismatch) == {"layer1._generated_relu_1", "layer2._generated_relu_1",
                                           "layer3._generated_relu_1"}
    assert all("the runtime runs QLinearAdd; the simulation runs float ops" in why
               for why in report.kernel_mismatch.values())
    assert "kernel mismatch: layer1._generated_relu_1" in str(report)


def test_other_profiles_use_the_runtimes_table(tmp_path):
    """A model prepared for another target, verified in ORT: the reference computes the kernels
    ORT was seen to fuse (its table would mispredict int8-activation fusions); the model's own
    eval mode stays the float simulation."""
    qmodel, path, x = _resnet("generic", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelMismatchWarning)  # not its table: no warning
        report = verify(qmodel, path, x, tensors=False)
    assert report.reference == "runtime"
    assert report.emulated.get("QLinearConv", 0) >= 1  # what ORT fused for int8 activations
    assert any("did not fuse" in why for why in report.not_emulated.values())
    assert fxquant.runtime_plan(qmodel).runtime is None
    with pytest.raises(fxquant.ConfigError, match="reference='runtime'"):
        verify(qmodel, path, x, "openvino", reference="runtime")
