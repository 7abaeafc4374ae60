"""``uopsl validate --onnx-reference``: a device validates its files against the bundle's proven FP32 ONNX file.

The chain of trust: the FP32 file must carry a PASS on ort-cpu recorded by a PyTorch-referenced run; anything
else (no record, FAIL, INCOMPLETE, a weak run, a changed file, a PASS that itself came from an ONNX reference) is
refused before anything runs. The fixture gets that PASS for real and cheaply: the tiny bundle's model is
``tinymodel.TinyScreen`` (seed 0), so the PyTorch reference is the same module in torch, run by
``validate_bundle`` on 120 small synthetic photographs (a pass is recorded from ``MIN_PARITY_IMAGES`` = 100).
The full ONNX-referenced run happens in a subprocess where importing torch or onnx raises.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tinybundle import CLASSES, fundus_jpeg, make_tiny_bundle
from uopsl.export.validate import ExcludedCandidate, ValidateConfig, plan_candidates, validate_bundle
from uopsl.runtime.backends import Availability
from uopsl.runtime.bundle import (
    MIN_PARITY_IMAGES,
    describe_file,
    parity_status,
    read_manifest,
    verify_or_raise,
    write_manifest,
)
from uopsl.runtime.clikit import LazyGroup, main_entry
from uopsl.runtime.errors import ConfigError

N = 120
assert N >= MIN_PARITY_IMAGES  # the PyTorch run must be strong enough for its PASS to be recorded
CPU = Availability(("CPUExecutionProvider",))


def _uopsl(argv: list[str]) -> int:
    """Run ``uopsl validate`` in this process (same LazyGroup plumbing and exit-code mapping as the CLI)."""
    import click

    @click.group(cls=LazyGroup, lazy={"validate": "uopsl.train.commands.validate:command"})
    def cli() -> None:
        pass

    return main_entry(cli, ["validate", *argv], prog_name="uopsl")


@pytest.fixture(scope="module")
def labelled_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 synthetic photographs with labels cycling over the tiny bundle's classes (path,label CSV)."""
    folder = tmp_path_factory.mktemp("photos")
    rows = ["path,label"]
    for i in range(N):
        p = fundus_jpeg(folder / f"i{i:03d}.jpg", size=96, seed=i)
        rows.append(f"{p.name},{CLASSES[i % len(CLASSES)].name}")
    csv = folder / "set.csv"
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return csv


@pytest.fixture(scope="module")
def proven_bundle(tmp_path_factory: pytest.TempPathFactory, labelled_csv: Path) -> Path:
    """FP32 + INT8 tiny bundle whose FP32 file passed on ort-cpu against its PyTorch model (read-only: copy it)."""
    from tinymodel import TinyScreen
    from uopsl.train.commands.validate import resolve_data
    from uopsl.train.reference import TorchReference

    root = make_tiny_bundle(tmp_path_factory.mktemp("proven") / "bundle", int8=True)
    reference = TorchReference(TinyScreen(len(CLASSES), seed=0), read_manifest(root).preprocess, device="cpu",
                               fingerprint="tinyscreen-seed0", source="TinyScreen(seed=0)")
    records, space, _ = resolve_data(str(labelled_csv))
    result = validate_bundle(root, reference, records, root.parent / "pytorch-run",
                             ValidateConfig(backends=("ort-cpu",), n_boot=0, show_progress=False),
                             label_space=space, context={"data": str(labelled_csv)}, availability=CPU)
    entry = read_manifest(root).file("model.onnx")
    assert parity_status(entry, "ort-cpu")[0], result.report["candidates"]
    run = entry.info["parity"]["backends"]["ort-cpu"]
    assert run["reference_kind"] == "pytorch" and run["reference_source"] == "pytorch:tinyscreen-seed0"
    return root


def _copy(bundle: Path, dest: Path) -> Path:
    return Path(shutil.copytree(bundle, dest))


def _edit_fp32_run(bundle: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``edit`` to model.onnx's ort-cpu record in place and rewrite the manifest."""
    m = read_manifest(bundle)
    files = []
    for f in m.files:
        if f.path == "model.onnx":
            info = copy.deepcopy(f.info)
            edit(info["parity"]["backends"]["ort-cpu"])
            f = replace(f, info=info)
        files.append(f)
    write_manifest(bundle, replace(m, files=tuple(files)))


def _refusal(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], data: Path) -> str:
    out = tmp_path / "out"
    capsys.readouterr()
    assert _uopsl([str(bundle), "--onnx-reference", "--data", str(data), "--out", str(out), "--backends",
                   "ort-cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one clean line
    assert not (out / "parity.json").exists()  # refused before anything ran
    return err


# -- refusals -------------------------------------------------------------------------------------------------
def test_refused_without_a_recorded_pytorch_pass(tmp_path: Path, labelled_csv: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundle", int8=False)
    before = (bundle / "manifest.json").read_bytes()
    err = _refusal(bundle, tmp_path, capsys, labelled_csv)
    assert "model.onnx has no parity record (never validated)" in err
    assert "uopsl validate BUNDLE --checkpoint CKPT --data DATA --out OUT" in err
    assert "PASS on ort-cpu against the PyTorch checkpoint" in err
    assert (bundle / "manifest.json").read_bytes() == before


def _fail(run: dict[str, Any]) -> None:
    run.update(passed=False, verdict="FAIL", reasons=["flip_rate 0.03 > 0.005"])


def _incomplete(run: dict[str, Any]) -> None:
    run.update(passed=False, verdict="INCOMPLETE", reasons=["auc_drop not evaluated: dme has no positive image"])


def _weak(run: dict[str, Any]) -> None:
    run.update(n_images=24)


def _onnx_pass(run: dict[str, Any]) -> None:
    run.update(reference_kind="onnx", reference_source="onnx:model.onnx@0123456789ab on ort-cpu")


@pytest.mark.parametrize(("edit", "says"), [
    (_fail, "model.onnx failed parity validation on ort-cpu (flip_rate 0.03 > 0.005)"),
    (_incomplete, "model.onnx was incomplete parity validation on ort-cpu"),
    (_weak, "only 24 images"),
    (_onnx_pass, "PASS was itself judged against an ONNX reference (onnx:model.onnx@0123456789ab on ort-cpu), "
                 "not against the PyTorch checkpoint"),
])
def test_refused_unless_the_fp32_file_passed_against_pytorch(proven_bundle: Path, tmp_path: Path, labelled_csv: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             edit: Callable[[dict[str, Any]], None], says: str) -> None:
    bundle = _copy(proven_bundle, tmp_path / "bundle")
    _edit_fp32_run(bundle, edit)
    err = _refusal(bundle, tmp_path, capsys, labelled_csv)
    assert says in err and "--checkpoint CKPT" in err, err


def test_refused_when_the_fp32_file_changed_since_its_pass(proven_bundle: Path, tmp_path: Path, labelled_csv: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from tinymodel import export_tiny_onnx

    # the file replaced, the manifest not: the reference hashes the file as it is now
    bundle = _copy(proven_bundle, tmp_path / "a")
    old_sha = read_manifest(bundle).file("model.onnx").sha256
    export_tiny_onnx(bundle / "model.onnx", seed=1)
    err = _refusal(bundle, tmp_path / "ra", capsys, labelled_csv)
    assert f"a stale record: model.onnx's parity record is for content sha256 {old_sha[:12]}..." in err
    assert "it changed after it was validated" in err and "--checkpoint CKPT" in err
    # the manifest re-hashed too, the old record kept: still stale
    bundle = _copy(proven_bundle, tmp_path / "b")
    export_tiny_onnx(bundle / "model.onnx", seed=1)
    m = read_manifest(bundle)
    write_manifest(bundle, replace(m, files=tuple(describe_file(bundle, f) if f.path == "model.onnx" else f
                                                  for f in m.files)))
    assert "a stale record" in _refusal(bundle, tmp_path / "rb", capsys, labelled_csv)


def test_a_record_from_before_reference_kinds_counts_as_pytorch(proven_bundle: Path, tmp_path: Path) -> None:
    """Records written before the reference fields existed were all PyTorch-referenced: they still prove the file."""
    from uopsl.export.onnx_reference import check_reference_chain

    bundle = _copy(proven_bundle, tmp_path / "bundle")

    def legacy(run: dict[str, Any]) -> None:
        del run["reference_kind"], run["reference_source"]

    _edit_fp32_run(bundle, legacy)
    proof = check_reference_chain(bundle)
    assert proof.entry.path == "model.onnx" and proof.record["n_images"] == N
    assert parity_status(read_manifest(bundle).file("model.onnx"), "ort-cpu")[0]  # the runtime reads it as before


@pytest.mark.parametrize(("extra", "says"), [
    ([], "no reference given: pass --checkpoint DIR"),
    (["--checkpoint", "CKPT", "--onnx-reference"], "pass exactly one"),
    (["--onnx-reference", "--device", "cpu"], "--device (the PyTorch reference's device"),
    (["--onnx-reference", "--other-checkpoint"], "--other-checkpoint (a comparison with another checkpoint) only "
                                                 "applies with --checkpoint, not with --onnx-reference"),
    (["--onnx-reference", "--device", "cpu", "--other-checkpoint"], "only apply with --checkpoint"),
])
def test_reference_options_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                       says: str) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundle")
    (tmp_path / "ckpt").mkdir()
    extra = [str(tmp_path / "ckpt") if a == "CKPT" else a for a in extra]
    capsys.readouterr()
    assert _uopsl([str(bundle), *extra, "--data", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


def test_without_onnxruntime_it_says_what_to_install(proven_bundle: Path, tmp_path: Path, labelled_csv: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    err = _refusal(proven_bundle, tmp_path, capsys, labelled_csv)
    assert "pip install onnxruntime" in err and "Jetson Zoo" in err and "onnxruntime-gpu" in err, err


# -- candidates ----------------------------------------------------------------------------------------------------
def test_excluded_pairs_are_skipped_with_their_reason_and_only_they(proven_bundle: Path) -> None:
    m = read_manifest(proven_bundle)
    av = Availability(("CPUExecutionProvider",), openvino=True)
    itself = ExcludedCandidate("model.onnx", "ort-cpu", "the reference itself")
    specs, skipped = plan_candidates(proven_bundle, m, ("all",), av, (itself,))
    assert {"name": "ort-cpu:model.onnx", "reason": "the reference itself"} in skipped
    # every other pair is judged as with a PyTorch reference: FP32 elsewhere, INT8 everywhere it runs
    assert {s.name for s in specs} == {"ort-cpu:model.int8.onnx", "openvino:model.onnx", "openvino:model.int8.onnx"}
    assert {s.name for s in plan_candidates(proven_bundle, m, ("all",), av)[0]} == {
        "ort-cpu:model.onnx", *(s.name for s in specs)}
    with pytest.raises(ConfigError, match="backend must be one of"):
        ExcludedCandidate("model.onnx", "cuda-magic", "why")


# -- the full run, without torch -------------------------------------------------------------------------------------
_NO_TORCH = r"""
import importlib.abc, sys
BLOCKED = ("torch", "torchvision", "timm", "onnx", "sentence_transformers", "safetensors")
tried = []

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            tried.append(name)
            raise ImportError(f"{name} is blocked: this run must work without PyTorch")
        return None

sys.meta_path.insert(0, Block())
sys.argv = ["uopsl", "validate", *sys.argv[1:]]
from uopsl.train.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print("TRIED:" + ",".join(sorted(set(tried))))
print("LOADED:" + ",".join(loaded))
print(f"EXIT:{code}")
"""


def test_full_run_against_the_onnx_reference_imports_no_torch(proven_bundle: Path, tmp_path: Path,
                                                              labelled_csv: Path) -> None:
    bundle = _copy(proven_bundle, tmp_path / "bundle")
    before = read_manifest(bundle)
    fp32_before = json.dumps(before.file("model.onnx").info["parity"], sort_keys=True)
    int8_before = before.file("model.int8.onnx").info["parity"]["backends"]["ort-cpu"]
    assert int8_before["reference_kind"] == "pytorch"  # the workstation's run judged the INT8 file too
    out = tmp_path / "out"
    env = {**os.environ, "UOPSL_CACHE_DIR": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, str(bundle), "--onnx-reference", "--data",
                           str(labelled_csv), "--out", str(out), "--backends", "ort-cpu", "--n-boot", "0", "--threads",
                           "1"], capture_output=True, text=True, timeout=300, env=env)
    lines = proc.stdout.splitlines()
    assert any(x.startswith("EXIT:") for x in lines), proc.stdout + proc.stderr[-3000:]
    code = next(int(x[5:]) for x in lines if x.startswith("EXIT:"))
    report = json.loads((out / "parity.json").read_text(encoding="utf-8"))
    (cand,) = report["candidates"]
    assert code == {"PASS": 0, "FAIL": 1, "INCOMPLETE": 1}[report["verdict"]], proc.stdout + proc.stderr[-3000:]
    # the reference pair is not a candidate: skipped, named as such, and its PyTorch verdict untouched
    assert cand["name"] == "ort-cpu:model.int8.onnx" and cand["verdict"] in ("PASS", "FAIL", "INCOMPLETE")
    assert {"name": "ort-cpu:model.onnx", "reason": "the reference itself"} in report["skipped_candidates"]
    assert "not run: ort-cpu:model.onnx (the reference itself)" in proc.stdout
    after = verify_or_raise(bundle)  # the bundle still verifies
    assert json.dumps(after.file("model.onnx").info["parity"], sort_keys=True) == fp32_before
    # the INT8 file's verdict names the ONNX reference (the file and its sha256 prefix) and how it was proven
    sha = after.file("model.onnx").sha256
    run = after.file("model.int8.onnx").info["parity"]["backends"]["ort-cpu"]
    assert run["verdict"] == cand["verdict"] and run["n_images"] == N
    assert run["reference_kind"] == "onnx" and run["reference_source"] == f"onnx:model.onnx@{sha[:12]} on ort-cpu"
    assert sha in run["reference_fingerprint"] and "onnxruntime " in run["reference_fingerprint"]
    assert "FP32 ONNX file model.onnx" in run["reference"] and "against PyTorch on 120 images" in run["reference"]
    assert parity_status(after.file("model.int8.onnx"), "ort-cpu")[0] == (cand["verdict"] == "PASS")
    # the reports name the reference
    assert report["reference"]["kind"] == "onnx" and report["reference"]["source"] == run["reference_source"]
    assert report["context"]["checkpoint"] is None and report["context"]["onnx_reference"]["sha256"] == sha
    assert report["data"]["truth"] == "labels" and report["data"]["n_used"] == N
    html = (out / "parity.html").read_text(encoding="utf-8")
    assert "Reference: the bundle&#x27;s FP32 ONNX file model.onnx" in html or \
        "Reference: the bundle's FP32 ONNX file model.onnx" in html
    assert proc.stdout.startswith("reference: the bundle's FP32 ONNX file model.onnx")
    # nothing of PyTorch (or onnx) was imported, nor even tried
    assert "TRIED:" in lines and "LOADED:" in lines, [x for x in lines if x.startswith(("TRIED:", "LOADED:"))]
