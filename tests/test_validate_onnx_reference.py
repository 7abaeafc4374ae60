"""``uopsl validate --onnx-reference``: a device validates its files against the bundle's proven FP32 ONNX file.

The chain of trust: the FP32 file must carry a PASS on ort-cpu recorded by a PyTorch-referenced run; anything
else (no record, FAIL, INCOMPLETE, a weak run, a changed file, a PASS that itself came from an ONNX reference) is
refused before anything runs. The fixture gets that PASS for real and cheaply: the tiny bundle's model is
``tinymodel.TinyScreen`` (seed 0), so the PyTorch reference is the same module in torch, run by
``validate_bundle`` on 120 small synthetic photographs (a pass is recorded from ``MIN_PARITY_IMAGES`` = 100).
The full ONNX-referenced run happens in a subprocess where importing torch or onnx raises.
Then the rules around the records (review s10, findings 1, 2 and 7): a verdict judged against the ONNX
reference never replaces one judged against PyTorch (the INT8 file's FAIL survives a run that would pass it),
but is recorded where there is none, naming the reference file's full sha256; ``auto`` re-checks that chain
(the FP32 file failed or changed since: the engine or INT8 PASS is no longer trusted); a reference that does not
declare its kind (a runtime backend judging the file against itself) is recorded as ``unknown`` and proves
nothing, nor does a record from before kinds without a reference fingerprint.
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
from validatekit import CPU, uopsl_validate
from uopsl.export.validate import ExcludedCandidate, ValidateConfig, plan_candidates, validate_bundle
from uopsl.runtime.backends import Availability
from uopsl.runtime.bundle import (
    MIN_PARITY_IMAGES,
    FileEntry,
    describe_file,
    parity_status,
    read_manifest,
    verify_or_raise,
    write_manifest,
)
from uopsl.runtime.errors import ConfigError

N = 120
assert N >= MIN_PARITY_IMAGES  # the PyTorch run must be strong enough for its PASS to be recorded
_uopsl = uopsl_validate


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
                             ValidateConfig(keep_ungradable=True, backends=("ort-cpu",), n_boot=0, show_progress=False),
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
    assert "model.onnx has no parity record (run `uopsl validate` on this bundle)" in err
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
    # An incomplete run is mended by other data, not by the same command again (session 58 review).
    assert ("on data that lets every gate be judged" in err) == (edit is _incomplete), err


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
    manifest_before = (bundle / "manifest.json").read_bytes()
    out = tmp_path / "out"
    env = {**os.environ, "UOPSL_CACHE_DIR": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, str(bundle), "--onnx-reference", "--data",
                           str(labelled_csv), "--out", str(out), "--backends", "ort-cpu", "--n-boot", "0", "--threads",
                           "1", "--keep-ungradable"],  # small photographs: see validatekit.uopsl_validate
                          capture_output=True, text=True, timeout=300, env=env)
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
    # the INT8 file was judged against PyTorch on the workstation: that verdict stays, the device's is only
    # reported (a verdict against the ONNX reference never replaces one against PyTorch); nothing else to record
    sha = after.file("model.onnx").sha256
    assert after.file("model.int8.onnx").info["parity"]["backends"]["ort-cpu"] == int8_before
    assert (bundle / "manifest.json").read_bytes() == manifest_before
    assert report["record"]["recorded"] == []
    assert report["record"]["kept_pytorch"] == [{"name": "ort-cpu:model.int8.onnx", "verdict": cand["verdict"],
                                                 "kept_verdict": int8_before["verdict"],
                                                 "kept_created": int8_before["created"]}]
    assert "keeps the verdict judged against PyTorch" in report["record"]["note"], report["record"]
    assert f"ort-cpu:model.int8.onnx {cand['verdict']} here, {int8_before['verdict']} against PyTorch" in proc.stdout
    # the reports name the reference (its file and full sha256) and the machine that proved it
    assert report["reference"]["kind"] == "onnx"
    assert report["reference"]["source"] == f"onnx:model.onnx@{sha[:12]} on ort-cpu"
    assert report["reference"]["file"] == "model.onnx" and report["reference"]["sha256"] == sha
    assert report["context"]["checkpoint"] is None and report["context"]["onnx_reference"]["sha256"] == sha
    proven = before.file("model.onnx").info["parity"]["backends"]["ort-cpu"]["machine"]
    assert report["context"]["onnx_reference"]["proven_machine"] == proven
    assert proven["onnxruntime"] == report["machine"]["onnxruntime"] and proven["arch"] == report["machine"]["arch"]
    assert report["data"]["truth"] == "labels" and report["data"]["n_used"] == N
    html = (out / "parity.html").read_text(encoding="utf-8")
    assert "Reference: the bundle&#x27;s FP32 ONNX file model.onnx" in html or \
        "Reference: the bundle's FP32 ONNX file model.onnx" in html
    assert proc.stdout.startswith("reference: the bundle's FP32 ONNX file model.onnx")
    # nothing of PyTorch (or onnx) was imported, nor even tried
    assert "TRIED:" in lines and "LOADED:" in lines, [x for x in lines if x.startswith(("TRIED:", "LOADED:"))]


# -- a PyTorch verdict is never replaced by an ONNX-referenced one ----------------------------------------------------
def _int8_is_the_fp32_file(bundle: Path, ort_cpu_record: dict[str, Any] | None) -> None:
    """Make model.int8.onnx a byte copy of model.onnx (it passes against the ONNX reference) with ``ort_cpu_record``
    as its ort-cpu verdict (None: never validated), as the workstation would have recorded it for that content."""
    shutil.copyfile(bundle / "model.onnx", bundle / "model.int8.onnx")
    m = read_manifest(bundle)
    files = []
    for f in m.files:
        if f.path == "model.int8.onnx":
            f = describe_file(bundle, replace(f, info={}))
            if ort_cpu_record is not None:
                f = replace(f, info={"parity": {"sha256": f.sha256, "backends": {"ort-cpu": ort_cpu_record}}})
        files.append(f)
    write_manifest(bundle, replace(m, files=tuple(files)))


def _onnx_run(bundle: Path, labelled_csv: Path, out: Path):  # noqa: ANN202
    from uopsl.export.onnx_reference import OnnxReference
    from uopsl.train.commands.validate import resolve_data

    records, space, _ = resolve_data(str(labelled_csv))
    with OnnxReference.from_bundle(bundle, 1) as reference:
        return validate_bundle(bundle, reference, records, out,
                               ValidateConfig(keep_ungradable=True, backends=("ort-cpu",), n_boot=0, show_progress=False),
                               label_space=space, context={"data": str(labelled_csv)}, availability=CPU)


def test_a_pytorch_fail_survives_an_onnx_run_that_passes_the_file(proven_bundle: Path, tmp_path: Path,
                                                                  labelled_csv: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The review's laundering case: the workstation failed the INT8 file; the device's ONNX run passes it."""
    bundle = _copy(proven_bundle, tmp_path / "bundle")
    fp32_run = read_manifest(bundle).file("model.onnx").info["parity"]["backends"]["ort-cpu"]
    pytorch_fail = {**copy.deepcopy(fp32_run), "passed": False, "verdict": "FAIL",
                    "reasons": ["class_flip_rate dme 0.013 > 0.005"]}
    _int8_is_the_fp32_file(bundle, pytorch_fail)
    before = (bundle / "manifest.json").read_bytes()
    with caplog.at_level("INFO", logger="uopsl"):
        result = _onnx_run(bundle, labelled_csv, tmp_path / "out")
    (cand,) = result.report["candidates"]
    assert cand["name"] == "ort-cpu:model.int8.onnx" and cand["verdict"] == "PASS"  # this run's own verdict...
    assert result.passed and result.report["record"]["recorded"] == []
    assert (bundle / "manifest.json").read_bytes() == before  # ...is not recorded: the PyTorch FAIL stays
    m = read_manifest(bundle)
    ok, why = parity_status(m.file("model.int8.onnx"), "ort-cpu", manifest=m)
    assert not ok and "failed parity validation on ort-cpu (class_flip_rate dme 0.013 > 0.005)" in why
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("keeps the verdict judged against PyTorch" in w
               and "ort-cpu:model.int8.onnx PASS here, FAIL against PyTorch" in w for w in warned), warned
    assert "keeps the verdict judged against PyTorch" in (result.html_path.read_text(encoding="utf-8"))


def test_record_parity_keeps_pytorch_verdicts_and_replaces_device_ones(proven_bundle: Path, tmp_path: Path) -> None:
    """The rule at the manifest writer, whoever calls it: PyTorch > ONNX; ONNX replaces ONNX; PyTorch replaces any."""
    from uopsl.export.bundle_writer import record_parity

    bundle = _copy(proven_bundle, tmp_path / "bundle")
    m = read_manifest(bundle)
    sha = m.file("model.onnx").sha256
    pytorch_pass = copy.deepcopy(m.file("model.onnx").info["parity"]["backends"]["ort-cpu"])
    onnx_pass = {**pytorch_pass, "reference_kind": "onnx", "reference_source": f"onnx:model.onnx@{sha[:12]} on ort-cpu",
                 "reference_file": "model.onnx", "reference_sha256": sha}
    onnx_fail = {**onnx_pass, "passed": False, "verdict": "FAIL", "reasons": ["flip_rate 0.03 > 0.005"]}
    unknown_pass = {**pytorch_pass, "reference_kind": "unknown", "reference_source": "unknown"}

    def run(path: str, backend: str) -> dict[str, Any]:
        return dict(read_manifest(bundle).file(path).info["parity"]["backends"][backend])

    int8_pytorch = run("model.int8.onnx", "ort-cpu")
    for newer in (onnx_pass, onnx_fail, unknown_pass):  # not judged against PyTorch: never replaces it
        record_parity(bundle, {"model.int8.onnx": {"ort-cpu": newer}})
        assert run("model.int8.onnx", "ort-cpu") == int8_pytorch
    record_parity(bundle, {"model.int8.onnx": {"openvino": onnx_pass}})  # no PyTorch verdict there: recorded
    assert run("model.int8.onnx", "openvino") == onnx_pass
    record_parity(bundle, {"model.int8.onnx": {"openvino": onnx_fail}})  # an ONNX verdict replaces an ONNX one
    assert run("model.int8.onnx", "openvino") == onnx_fail
    record_parity(bundle, {"model.int8.onnx": {"openvino": pytorch_pass}})  # PyTorch replaces it...
    assert run("model.int8.onnx", "openvino") == pytorch_pass
    record_parity(bundle, {"model.int8.onnx": {"openvino": onnx_fail}})  # ...and then stays
    assert run("model.int8.onnx", "openvino") == pytorch_pass
    verify_or_raise(bundle)


def test_an_onnx_verdict_is_recorded_where_no_pytorch_one_exists(proven_bundle: Path, tmp_path: Path,
                                                                 labelled_csv: Path) -> None:
    """A file the workstation never judged (like an engine built on the device) gets the ONNX-referenced verdict,
    which names the reference file and its full sha256; auto trusts it only while that file keeps its PyTorch PASS."""
    from tinymodel import export_tiny_onnx

    bundle = _copy(proven_bundle, tmp_path / "bundle")
    _int8_is_the_fp32_file(bundle, None)
    result = _onnx_run(bundle, labelled_csv, tmp_path / "out")
    assert result.passed and result.report["record"] == {
        "enabled": True, "run_problem": None, "note": None, "recorded": ["ort-cpu:model.int8.onnx"],
        "recorded_verdicts": [{"name": "ort-cpu:model.int8.onnx", "verdict": "PASS"}], "kept": [],
        "kept_pytorch": [], "not_recorded": []}
    m = read_manifest(bundle)
    sha = m.file("model.onnx").sha256
    int8 = m.file("model.int8.onnx")
    run = int8.info["parity"]["backends"]["ort-cpu"]
    assert run["verdict"] == "PASS" and run["n_images"] == N
    assert run["reference_kind"] == "onnx" and run["reference_source"] == f"onnx:model.onnx@{sha[:12]} on ort-cpu"
    assert run["reference_file"] == "model.onnx" and run["reference_sha256"] == sha
    assert sha in run["reference_fingerprint"] and "onnxruntime " in run["reference_fingerprint"]
    assert "FP32 ONNX file model.onnx" in run["reference"] and "against PyTorch on 120 images" in run["reference"]
    assert set(run["machine"]) == {"arch", "onnxruntime", "cpu_int8"}  # ort-cpu: the CPU's 8-bit arithmetic too
    assert parity_status(int8, "ort-cpu", manifest=m) == (True, parity_status(int8, "ort-cpu", manifest=m)[1])
    # without the manifest the chain cannot be checked: not trusted, and the reason says why
    ok, why = parity_status(int8, "ort-cpu")
    assert not ok and "judged against an ONNX reference (model.onnx)" in why and "manifest" in why
    # the FP32 file's PyTorch PASS becomes a FAIL (re-validated on more data): the INT8 PASS is no longer trusted
    failed = _copy(bundle, tmp_path / "failed")
    _edit_fp32_run(failed, _fail)
    m = read_manifest(failed)
    ok, why = parity_status(m.file("model.int8.onnx"), "ort-cpu", manifest=m)
    assert not ok and "and that file no longer carries its PyTorch PASS: model.onnx failed parity validation" in why
    assert "uopsl validate --onnx-reference --backends ort-cpu" in why
    # the FP32 file re-exported (its record follows the new content): the INT8 PASS was judged against another file
    changed = _copy(bundle, tmp_path / "changed")
    export_tiny_onnx(changed / "model.onnx", seed=1)
    m = read_manifest(changed)
    write_manifest(changed, replace(m, files=tuple(describe_file(changed, f) if f.path == "model.onnx" else f
                                                   for f in m.files)))
    m = read_manifest(changed)
    ok, why = parity_status(m.file("model.int8.onnx"), "ort-cpu", manifest=m)
    assert not ok and f"model.onnx with sha256 {sha[:12]}...), which has changed since" in why


def _engine_bundle(proven: Path, dest: Path, record: Callable[[str], dict[str, Any]]) -> Path:
    """The proven bundle plus an INT8 'engine' (stand-in bytes) whose tensorrt verdict is ``record(fp32 sha256)``."""
    bundle = _copy(proven, dest)
    (bundle / "model.engine").write_bytes(b"engine stand-in")
    m = read_manifest(bundle)
    engine = describe_file(bundle, FileEntry("model.engine", "engine", "int8"))
    engine = replace(engine, info={"parity": {"sha256": engine.sha256,
                                              "backends": {"tensorrt": record(m.file("model.onnx").sha256)}}})
    write_manifest(bundle, replace(m, files=(*m.files, engine)))
    return bundle


def _auto_on_a_gpu(bundle: Path) -> Any:
    from uopsl.runtime.backends import select_backend

    return select_backend(bundle, "auto", "auto", availability=Availability(("CPUExecutionProvider",), tensorrt=True),
                          engine_check=lambda path: None, measure=False)


def test_auto_rechecks_the_chain_of_an_engines_onnx_referenced_pass(proven_bundle: Path, tmp_path: Path) -> None:
    from tinymodel import export_tiny_onnx

    fp32_run = read_manifest(proven_bundle).file("model.onnx").info["parity"]["backends"]["ort-cpu"]

    def onnx_pass(sha: str) -> dict[str, Any]:
        return {**copy.deepcopy(fp32_run), "reference_kind": "onnx",
                "reference_source": f"onnx:model.onnx@{sha[:12]} on ort-cpu", "reference_file": "model.onnx",
                "reference_sha256": sha}

    bundle = _engine_bundle(proven_bundle, tmp_path / "ok", onnx_pass)
    sel = _auto_on_a_gpu(bundle)
    assert (sel.backend, sel.file) == ("tensorrt", "model.engine"), sel.reason
    m = read_manifest(bundle)
    assert parity_status(m.file("model.engine"), "tensorrt", manifest=m)[0]
    assert not parity_status(m.file("model.engine"), "tensorrt")[0]  # no manifest, no chain: not trusted
    # the FP32 file's record becomes a FAIL: auto no longer takes the engine, and says why
    failed = _engine_bundle(proven_bundle, tmp_path / "failed", onnx_pass)
    _edit_fp32_run(failed, _fail)
    sel = _auto_on_a_gpu(failed)
    assert sel.backend == "ort-cpu", sel.reason
    assert ("engine model.engine skipped: INT8 is not used unasked: model.engine's PASS on tensorrt was judged against "
            "an ONNX reference (model.onnx), and that file no longer carries its PyTorch PASS: model.onnx failed "
            "parity validation on ort-cpu") in sel.reason
    # the FP32 file changed since the engine was judged against it
    changed = _engine_bundle(proven_bundle, tmp_path / "changed", onnx_pass)
    export_tiny_onnx(changed / "model.onnx", seed=1)
    m = read_manifest(changed)
    write_manifest(changed, replace(m, files=tuple(describe_file(changed, f) if f.path == "model.onnx" else f
                                                   for f in m.files)))
    sel = _auto_on_a_gpu(changed)
    assert sel.backend == "ort-cpu" and "which has changed since" in sel.reason, sel.reason
    # a record from before the reference's sha256 was kept cannot be checked: not trusted, re-run on the device
    def unnamed(sha: str) -> dict[str, Any]:
        r = onnx_pass(sha)
        del r["reference_file"], r["reference_sha256"]
        return r

    old = _engine_bundle(proven_bundle, tmp_path / "old", unnamed)
    sel = _auto_on_a_gpu(old)
    assert sel.backend == "ort-cpu" and "does not name (written by an earlier uopsl)" in sel.reason, sel.reason
    # uopsl-screen info shows it the way auto decides
    from uopsl.runtime.cli import _parity_word

    m = read_manifest(failed)
    assert _parity_word(m.file("model.engine"), m).startswith("not passed (tensorrt PASS, not trusted)")
    m = read_manifest(bundle)
    assert _parity_word(m.file("model.engine"), m) == "PASS (tensorrt PASS)"


# -- the reference kind is declared, never assumed -------------------------------------------------------------------
def test_a_backend_as_the_reference_is_recorded_as_unknown_and_proves_nothing(proven_bundle: Path, tmp_path: Path,
                                                                             labelled_csv: Path) -> None:
    """The review's self-reference: the FP32 file judged against itself on ONNX Runtime is no PyTorch PASS."""
    from uopsl.export.onnx_reference import check_reference_chain
    from uopsl.runtime.backends.onnxruntime import OrtBackend
    from uopsl.train.commands.validate import resolve_data
    from uopsl.train.reference import TorchReference

    assert TorchReference.reference_kind == "pytorch"  # declared by the class, not defaulted by validate
    records, space, _ = resolve_data(str(labelled_csv))
    cfg = ValidateConfig(keep_ungradable=True, backends=("ort-cpu",), n_boot=0, show_progress=False)
    bundle = make_tiny_bundle(tmp_path / "fresh", int8=False)
    with OrtBackend(bundle / "model.onnx", "cpu", 1) as itself:
        result = validate_bundle(bundle, itself, records, tmp_path / "out", cfg, label_space=space,
                                 context={"data": "x"}, availability=CPU)
    assert result.report["reference"]["kind"] == "unknown" and result.report["reference"]["source"] == "unknown"
    entry = read_manifest(bundle).file("model.onnx")
    run = entry.info["parity"]["backends"]["ort-cpu"]
    assert run["verdict"] == "PASS" and run["reference_kind"] == "unknown" and run["reference_fingerprint"] == ""
    assert parity_status(entry, "ort-cpu")[0]  # judged by the same gates, as before...
    with pytest.raises(ConfigError, match="model.onnx's ort-cpu PASS names a reference of kind 'unknown', not the "
                                          "PyTorch checkpoint"):
        check_reference_chain(bundle)  # ...but it does not start a chain of trust
    # on a proven bundle the same run replaces no PyTorch verdict
    proven = _copy(proven_bundle, tmp_path / "proven")
    before = (proven / "manifest.json").read_bytes()
    with OrtBackend(proven / "model.onnx", "cpu", 1) as itself:
        result = validate_bundle(proven, itself, records, tmp_path / "out2", cfg, label_space=space,
                                 context={"data": "x"}, availability=CPU)
    assert {k["name"] for k in result.report["record"]["kept_pytorch"]} == {"ort-cpu:model.onnx",
                                                                            "ort-cpu:model.int8.onnx"}
    assert (proven / "manifest.json").read_bytes() == before
    assert check_reference_chain(proven).record["reference_kind"] == "pytorch"


def test_a_record_from_before_reference_kinds_without_a_fingerprint_proves_nothing(proven_bundle: Path,
                                                                                   tmp_path: Path) -> None:
    """A legacy record counts as PyTorch only with the reference's fingerprint: a backend used as one left it empty."""
    from uopsl.export.onnx_reference import check_reference_chain

    bundle = _copy(proven_bundle, tmp_path / "bundle")

    def legacy_backend(run: dict[str, Any]) -> None:
        del run["reference_kind"], run["reference_source"]
        run["reference_fingerprint"] = ""

    _edit_fp32_run(bundle, legacy_backend)
    with pytest.raises(ConfigError, match="names no reference kind and no reference fingerprint"):
        check_reference_chain(bundle)


def test_another_onnx_runtime_than_the_proving_one_is_warned_about(proven_bundle: Path, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    from uopsl.export.onnx_reference import OnnxReference

    bundle = _copy(proven_bundle, tmp_path / "bundle")
    proven = read_manifest(bundle).file("model.onnx").info["parity"]["backends"]["ort-cpu"]["machine"]
    with caplog.at_level("WARNING", logger="uopsl"):
        OnnxReference.from_bundle(bundle, 1)
    assert not caplog.records  # the same ONNX Runtime on the same architecture: nothing to say
    _edit_fp32_run(bundle, lambda run: run.update(machine={"arch": "x86_64-elsewhere", "onnxruntime": "0.0.1"}))
    with caplog.at_level("WARNING", logger="uopsl"):
        ref = OnnxReference.from_bundle(bundle, 1)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert f"onnxruntime 0.0.1 there, {ref.ort_version} here" in warning
    assert f"arch x86_64-elsewhere there, {proven['arch']} here" in warning and "stricter gates" in warning


def test_the_reference_pass_holds_the_fp32_tolerance_too(proven_bundle: Path, tmp_path: Path) -> None:
    """A review: an FP32 file off by 1e-2 everywhere passed the decision gates, and that PASS made it the
    reference devices judge their engines against. Its ort-cpu PASS now holds max |dp| <= 1e-4 as well."""
    from uopsl.export.onnx_reference import check_reference_chain
    from uopsl.export.parity_metrics import ParityGates
    from uopsl.export.validate import CandidateSpec, candidate_gates
    from uopsl.runtime.bundle import REFERENCE_MAX_PROB_DIFF

    run = read_manifest(proven_bundle).file("model.onnx").info["parity"]["backends"]["ort-cpu"]
    assert run["gates"]["max_prob_diff"] == REFERENCE_MAX_PROB_DIFF == 1e-4
    # What judges which file: the user's stricter limit is kept; a looser one or none becomes 1e-4 there only.
    fp32_cpu = CandidateSpec("ort-cpu:model.onnx", "ort-cpu", "model.onnx", "fp32")
    assert candidate_gates(ParityGates(), fp32_cpu).max_prob_diff == 1e-4
    assert candidate_gates(ParityGates(max_prob_diff=1e-5), fp32_cpu).max_prob_diff == 1e-5
    assert candidate_gates(ParityGates(max_prob_diff=1e-2), fp32_cpu).max_prob_diff == 1e-4
    for other in (CandidateSpec("ort-cuda:model.onnx", "ort-cuda", "model.onnx", "fp32"),
                  CandidateSpec("ort-cpu:model.int8.onnx", "ort-cpu", "model.int8.onnx", "int8-qdq-u8")):
        assert candidate_gates(ParityGates(), other) == ParityGates()
    # A record from before the tolerance (its gates say max_prob_diff None) proves nothing as a reference.
    bundle = _copy(proven_bundle, tmp_path / "bundle")

    def before(r: dict[str, Any]) -> None:
        r["gates"]["max_prob_diff"] = None

    _edit_fp32_run(bundle, before)
    with pytest.raises(ConfigError, match=r"did not also hold max \|prob diff\| <= 0.0001"):
        check_reference_chain(bundle)
