"""The end-to-end demo in its quick form, and the README's Python API on the bundle it writes."""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from uopsl.runtime.bundle import read_manifest, verify

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([sys.executable, "-m", "uopsl.train.cli", "-q", "demo", "--out", str(out), "--quick"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "demo finished" in proc.stdout
    return out


def test_demo_writes_the_documented_layout(demo: Path) -> None:
    for sub in ("data", "checkpoints", "bundle", "screen", "eval"):
        assert (demo / sub).is_dir(), sub
    assert (demo / "checkpoints" / "finetune" / "model.safetensors").is_file()
    assert (demo / "eval" / "roc.png").stat().st_size > 1000
    summary = json.loads((demo / "demo.json").read_text())
    assert summary["screened"] == len(list((demo / "data" / "test" / "fundus").iterdir()))
    # Which bootstrap each figure used: config.n_boot is the release gate's, the evaluation's is named apart.
    assert summary["evaluate_n_boot"] == json.loads((demo / "eval" / "eval.json").read_text())["bootstrap"]["n_boot"]
    # the release gate ran on the test set. The quick demo's 24 test photographs hold fewer than 10 positives of
    # each disease: the FP32 file matches PyTorch on every figure (no flip), but the AUC and sensitivity gates
    # cannot count those classes, so its verdict is INCOMPLETE, not PASS (MIN_CASES_PER_CLASS; the full
    # demo's 120 photographs hold 20-42 of each)
    assert (demo / "parity" / "parity.html").is_file() and summary["parity"]["ort-cpu:model.onnx"] == "INCOMPLETE"
    fp32 = next(c for c in json.loads((demo / "parity" / "parity.json").read_text())["candidates"]
                if c["name"] == "ort-cpu:model.onnx")
    checks = {k["name"]: k for k in fp32["checks"]}
    assert checks["flip_rate"]["passed"] and checks["finding_change_rate"]["passed"]
    assert any("positive image" in s["reason"] for s in checks["auc_drop"]["skipped"])
    from uopsl.runtime.bundle import read_manifest

    from uopsl.runtime.bundle import parity_status

    files = {f.path: f for f in read_manifest(demo / "bundle").files}
    # the quick demo validates on 24 images: a PASS there is reported, but too few images to vouch for the file,
    # so it is not recorded (the full demo's 120 are enough); a FAIL is always recorded
    first = json.loads((demo / "parity" / "parity.json").read_text())
    ok, why = parity_status(files["model.onnx"], "ort-cpu")
    assert not ok and "no parity record" in why and "only 24 images" in first["record"]["note"]
    int8 = {c["backend"]: c["verdict"] for c in first["candidates"] if c["file"] == "model.int8.onnx"}
    recorded = files["model.int8.onnx"].info.get("parity", {}).get("backends", {})
    assert {b for b, v in int8.items() if v == "FAIL"} == set(recorded)
    # a file that did not pass says why (the gates' reasons, then the decision headroom of a failed top-1 or
    # flip gate)
    failed = {name for name, verdict in summary["parity"].items() if verdict != "PASS"}
    assert set(summary["parity_failures"]) == failed
    report = json.loads((demo / "parity" / "parity.json").read_text())
    for c in report["candidates"]:
        if c["name"] in failed:
            lines = summary["parity_failures"][c["name"]]
            assert lines[: len(c["reasons"])] == c["reasons"] and len(lines) >= len(c["reasons"]) > 0
            gates = {k["name"] for k in c["checks"] if k["passed"] is False}
            assert any(line.startswith("top1: ") for line in lines) == ("top1_agreement" in gates)
    assert 0.0 <= summary["test_macro_auc"]["estimate"] <= 1.0
    # where the maps point, against the synthetic test pool's true site masks: every disease, never normal
    conc = json.loads((demo / "eval" / "eval.json").read_text())["site_concentration"]
    assert set(conc) == {"dr", "dme", "amd", "glaucoma"}
    assert all(v["n_images"] > 0 and v["mean"] >= 0 for v in conc.values())
    assert summary["site_concentration"] == conc
    assert all(v["pooled_prior"] > 0 and v["class_prior"] > 0 for v in conc.values())  # the yardsticks


def test_demo_bundle_verifies_and_holds_fp32_int8_and_calibration(demo: Path) -> None:
    checks = verify(demo / "bundle")
    assert checks and all(c.ok for c in checks), checks
    names = {c.path for c in checks}
    assert {"manifest.json", "model.onnx", "model.int8.onnx", "calibration.json", "class_bank.npy"} <= names
    # the table the INT8 file came from, as `uopsl quantize` records it (the demo recorded "", session 51)
    int8 = read_manifest(demo / "bundle").file("model.int8.onnx")
    assert int8.info["calibration_sha256"] == hashlib.sha256((demo / "bundle" / "calibration.json").read_bytes()).hexdigest()


def test_demo_release_gate_records_its_provenance(demo: Path) -> None:
    """A review: the demo's parity.json had no command, device or checkpoint weights sha256, so it could not show
    that the PyTorch reference was the checkpoint the bundle came from (its PASS is what devices build on)."""
    report = json.loads((demo / "parity" / "parity.json").read_text())
    ctx, ref = report["context"], report["reference"]
    assert ctx["command"].endswith(f"demo --out {demo} --quick") and ctx["device"] == "cpu"
    assert ctx["data"].startswith("synthetic:") and ctx["data_description"]
    assert ref["checkpoint_matches_bundle"] is True
    assert ref["checkpoint_weights_sha256"] == read_manifest(demo / "bundle").notes["checkpoint_weights_sha256"]
    # Where each threshold came from: the checkpoint's operating points, in the manifest and the report.
    points = read_manifest(demo / "bundle").notes["operating_points"]
    manifest = read_manifest(demo / "bundle")
    assert [p["name"] for p in points] == list(manifest.class_names)
    assert all(p["source"] == "checkpoint validation data" and p["threshold"] == c.threshold and p["n_positive"] > 0
               for p, c in zip(points, manifest.classes))
    assert any(p["method"] == "target_sensitivity" for p in points)
    assert report["bundle"]["operating_points"] == points
    assert "Operating thresholds</b>" in (demo / "parity" / "parity.html").read_text(encoding="utf-8")
    # The settings each verdict holds for (ONNX Runtime's optimisation level alone moved INT8 outputs by 0.17).
    ort = [c for c in report["candidates"] if c["backend"] == "ort-cpu"]
    assert ort and all(c["runtime_settings"]["graph_optimization"] == "all" and
                       c["runtime_settings"]["providers"] == ["CPUExecutionProvider"] for c in ort)


def test_demo_report_has_a_row_per_photograph(demo: Path) -> None:
    rows = (demo / "screen" / "results.jsonl").read_text().strip().splitlines()
    n = len(list((demo / "data" / "test" / "fundus").iterdir()))
    assert len(rows) == n
    html = (demo / "screen" / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html") or html.lower().startswith("<!doctype html")
    # Trained on synthetic photographs: the bundle says so, and so does the report's first line.
    use = read_manifest(demo / "bundle").intended_use
    assert use.status == "demonstration" and "synthetic" in use.trained_on
    assert "<div class='use use-demonstration' id='intended-use'" in html


def test_evaluate_command_reports_where_the_maps_point_on_synthetic_data(demo: Path, tmp_path: Path) -> None:
    """``uopsl evaluate`` reads the synthetic pool's site masks and matches the demo's own figures."""
    from click.testing import CliRunner

    from uopsl.train.cli import cli

    res = CliRunner().invoke(cli, ["evaluate", str(demo / "checkpoints" / "finetune"), "--data",
                                   f"synthetic:{demo / 'data' / 'test'}", "--out", str(tmp_path / "ev"), "--n-boot", "20"])
    assert res.exit_code == 0, res.output
    assert "site concentration" in res.output
    got = json.loads((tmp_path / "ev" / "eval.json").read_text())["site_concentration"]
    want = json.loads((demo / "eval" / "eval.json").read_text())["site_concentration"]
    assert {k: v["n_images"] for k, v in got.items()} == {k: v["n_images"] for k, v in want.items()}
    assert all(got[k]["mean"] == pytest.approx(want[k]["mean"], rel=1e-4) for k in want)


def test_demo_rerun_resumes_without_redoing_work(demo: Path) -> None:
    before = (demo / "checkpoints" / "finetune" / "model.safetensors").stat().st_mtime_ns
    proc = subprocess.run([sys.executable, "-m", "uopsl.train.cli", "-q", "demo", "--out", str(demo), "--quick"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (demo / "checkpoints" / "finetune" / "model.safetensors").stat().st_mtime_ns == before
    rows = (demo / "screen" / "results.jsonl").read_text().strip().splitlines()
    assert len(rows) == len(list((demo / "data" / "test" / "fundus").iterdir()))
    # Stages that had nothing to do are timed from their own start: no negative or "-0.0 s" stage.
    seconds = json.loads((demo / "demo.json").read_text())["seconds"]
    assert seconds and all(math.copysign(1.0, v) > 0 for v in seconds.values()), seconds


def test_readme_python_example_runs_on_the_demo_bundle(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(from uopsl\.runtime\.api import Screener.*?)```", readme, re.S)
    assert code, "README lost its Python API example"
    photo = sorted((demo / "data" / "test" / "fundus").iterdir())[0]
    visit = demo / "visit1"
    visit.mkdir(exist_ok=True)
    (visit / photo.name).write_bytes(photo.read_bytes())
    src = code.group(1).replace('"demo/bundle"', repr(str(demo / "bundle")))
    src = src.replace('"patient_0042_OD.jpg"', repr(str(photo))).replace('["visit1/", "visit2/"]', repr([str(visit)]))
    monkeypatch.chdir(demo)
    exec(compile(src, "README.md", "exec"), {})


def test_stage_clock_times_each_stage_from_its_own_start() -> None:
    from uopsl.train.demo import StageClock

    # 0.06 s then 0.03 s: subtracting the first stage's rounded 0.1 from the 0.09 s since the start, as the demo
    # did, logged the second stage as "-0.0 s".
    ticks = iter([0.06, 0.09, 2.34])
    clock = StageClock(0.0, clock=lambda: next(ticks))
    for name in ("data", "export", "screen"):
        clock.lap(name)
    assert clock.seconds == {"data": 0.1, "export": 0.0, "screen": 2.2}
    assert math.copysign(1.0, clock.seconds["export"]) > 0


def test_the_errors_the_readme_names_import_from_where_screener_comes_from() -> None:
    # A session-45 review: the README names six error classes a device catches around a Screener, and only
    # three could be imported from uopsl.runtime.api.
    import uopsl.runtime.api as api
    from uopsl.runtime import errors

    readme = (ROOT / "README.md").read_text()
    api_section = readme[readme.index("## Python API"):]
    named = set(re.findall(r"`(\w+Error)`", api_section))
    assert {"BundleError", "BackendError", "EngineMismatchError", "MissingDependencyError", "ConfigError"} <= named
    for name in named | {"BackendClosedError", "UopslError"}:
        assert getattr(api, name) is getattr(errors, name) and name in api.__all__, name
