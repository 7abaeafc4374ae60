"""A CPU INT8 verdict holds only on CPUs that do 8-bit sums the same way (VNNI or not; ARM dot products or not)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from uopsl.runtime import bundle as bundle_mod
from uopsl.runtime import cpuinfo
from uopsl.runtime.bundle import PARITY_GATE_DEFAULTS, FileEntry, parity_status


@pytest.mark.parametrize("machine, flags, expect", [
    ("x86_64", "fpu sse2 avx2 avx512f avx512bw avx512_vnni", "x86-vnni"),
    ("x86_64", "fpu sse2 avx2 avx_vnni", "x86-vnni"),
    ("x86_64", "fpu sse2 avx2 avx512f avx512bw", "x86-no-vnni"),
    ("AMD64", "", "x86"),  # flags unreadable (not Linux)
    ("aarch64", "fp asimd asimddp", "arm64-dotprod"),
    ("aarch64", "fp asimd", "arm64-no-dotprod"),
])
def test_int8_cpu_class(machine: str, flags: str, expect: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpuinfo.platform, "machine", lambda: machine)
    monkeypatch.setattr(cpuinfo, "_cpu_flags", lambda: frozenset(flags.split()))
    cpuinfo.int8_cpu_class.cache_clear()
    try:
        assert cpuinfo.int8_cpu_class() == expect
    finally:
        cpuinfo.int8_cpu_class.cache_clear()


def test_this_machine_reads_its_flags() -> None:
    if not Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo here")
    assert cpuinfo.int8_cpu_class() not in ("x86", "arm64", "unknown")


def _entry(precision: str, cpu_int8: str | None) -> FileEntry:
    machine = {"arch": "x86_64", "onnxruntime": "1.32.0", **({"cpu_int8": cpu_int8} if cpu_int8 else {})}
    run = {"passed": True, "verdict": "PASS", "n_images": 300, "gates": dict(PARITY_GATE_DEFAULTS),
           "data": {"spec": "synthetic:test"}, "reference": "PyTorch", "reasons": [], "machine": machine,
           "created": "2026-11-29T10:00:00+00:00"}
    e = FileEntry("model.int8.onnx" if precision != "fp32" else "model.onnx", "onnx", precision, sha256="ab" * 32)
    return replace(e, info={"parity": {"sha256": e.sha256, "backends": {"ort-cpu": run, "tensorrt": run}}})


def test_a_cpu_int8_pass_does_not_carry_to_another_kind_of_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundle_mod, "int8_cpu_class", lambda: "x86-no-vnni")
    ok, why = parity_status(_entry("int8-qdq-u8", "x86-vnni"), "ort-cpu")
    assert not ok and "on a x86-vnni CPU, and this one is x86-no-vnni" in why and "--onnx-reference" in why
    assert parity_status(_entry("int8-qdq-u8", "x86-no-vnni"), "ort-cpu")[0], "the same kind of CPU"
    ok, why = parity_status(_entry("int8-qdq-u8", None), "ort-cpu")  # a record from before the class was kept
    assert not ok and "does not say which kind of CPU" in why, "not trusted, as records lacking other fields"
    assert parity_status(_entry("fp32", None), "ort-cpu")[0], "FP32 needs no CPU class"
    assert parity_status(_entry("fp32", "x86-vnni"), "ort-cpu")[0], "FP32 is the same on every CPU"
    assert parity_status(_entry("int8-qdq-s8", "x86-vnni"), "tensorrt")[0], "a GPU backend is not the CPU's"
    monkeypatch.setattr(bundle_mod, "int8_cpu_class", lambda: "x86")  # flags unreadable here: cannot tell
    assert parity_status(_entry("int8-qdq-u8", "x86-vnni"), "ort-cpu")[0]


def test_validate_records_the_cpu_class_for_cpu_backends_only() -> None:
    from uopsl.export.parity_record import backend_machine
    from uopsl.export.validate import machine_facts

    machine = machine_facts()
    assert machine["cpu_int8"] == cpuinfo.int8_cpu_class()
    assert backend_machine("ort-cpu", machine)["cpu_int8"] == machine["cpu_int8"]
    assert "cpu_int8" not in backend_machine("tensorrt", machine)
