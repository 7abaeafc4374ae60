"""An INT8 file validated on its own calibration images (session 56).

Before: calibration.json kept only the calibration set's fingerprint, so ``uopsl validate`` could not tell
whether the images it judged an INT8 file on were the images its ranges were fitted on (``data.images_seen``
said "not checked"), and such a file's PASS went into the manifest like a held-out one. Now each calibration
image file's digest travels from the set into the table, and validate counts the overlap per INT8 file: it
warns, keeps the FAIL, does not record the PASS, and the run is not a release pass.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from test_validate_signoff import _cand
from tinymodel import export_tiny_onnx
from validatekit import (  # noqa: F401 - photos, image_keys: module fixtures
    CPU, NAMES, N, PRE, PatchedModels, cycled_labels, image_keys, photos,
)
from uopsl.calibration.dataset import CalibrationSet, build_calibration_set
from uopsl.calibration.ranges import calibrate
from uopsl.calibration.table import CalibrationTable
from uopsl.export.calibration_images import calibration_overlaps
from uopsl.export.parity_metrics import FAIL, PASS, ParityGates
from uopsl.export.validate import ImageRecord, ValidateConfig, validate_bundle
from uopsl.runtime.bundle import PARITY_KEY, FileEntry, Manifest, describe_file, read_manifest, write_manifest
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import SHORT_DIGEST_CHARS

FINGERPRINT = "f" * 64
CALIB = 40  # the first CALIB photographs calibrated the INT8 file


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:SHORT_DIGEST_CHARS]


def _table(digests: Sequence[str] | None, fingerprint: str = FINGERPRINT) -> CalibrationTable:
    return CalibrationTable(ranges={"x": (0.0, 1.0)}, method="minmax", model_sha256="a" * 64,
                            set_fingerprint=fingerprint, num_images=max(1, len(digests or ())),
                            image_digests=None if digests is None else tuple(digests))


def _bundle(root: Path, table: CalibrationTable | None, *, int8_fingerprint: str | None = FINGERPRINT) -> Path:
    """validatekit's placeholder bundle, with its INT8 file's calibration recorded as `uopsl quantize` does."""
    from uopsl.runtime.bundle import ClassSpec
    from validatekit import DEMO_CLASSES

    root.mkdir(parents=True)
    (root / "model.onnx").write_bytes(b"fp32 stand-in")
    (root / "model.int8.onnx").write_bytes(b"int8 stand-in")
    info = {"calibration_fingerprint": int8_fingerprint} if int8_fingerprint else {}
    entries = [FileEntry("model.onnx", "onnx", "fp32"), FileEntry("model.int8.onnx", "onnx", "int8-qdq-u8", info=info)]
    if table is not None:
        table.save(root / "calibration.json")
        entries.append(FileEntry("calibration.json", "calibration"))
    files = tuple(describe_file(root, f) for f in entries)
    classes: tuple[ClassSpec, ...] = DEMO_CLASSES
    write_manifest(root, Manifest(classes=classes, head="sigmoid", preprocess=PRE, files=files, model_name="s56"))
    return root


def _validate(bundle: Path, photos: Sequence[Path], models: PatchedModels, out: Path) -> Any:
    labels = cycled_labels(len(photos))
    records = [ImageRecord(p.stem, p, lab, patient=f"P{i // 2}") for i, (p, lab) in enumerate(zip(photos, labels))]
    cfg = ValidateConfig(keep_ungradable=True, backends=("ort-cpu",), gates=ParityGates(), n_boot=0,
                         show_progress=False)
    return validate_bundle(bundle, models.reference, records, out, cfg, label_space=NAMES,
                           context={"data": "test table"}, availability=CPU)


def _recorded(bundle: Path, file: str) -> dict[str, Any] | None:
    rec = read_manifest(bundle).file(file).info.get(PARITY_KEY)
    return None if rec is None else rec["backends"].get("ort-cpu")


# -- the digests travel from the images to the table ---------------------------------------------------------

def test_a_built_set_records_each_files_digest_and_keeps_them_through_cache_and_subset(
        photos: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "set.npz"
    built = build_calibration_set(photos[:12], PRE, require_fov=False, cache=cache, show_progress=False)
    assert built.digests == tuple(_digest(Path(s)) for s in built.sources)
    assert len(set(built.digests)) == len(built)
    again = build_calibration_set(photos[:12], PRE, require_fov=False, cache=cache, show_progress=False)
    assert again.digests == built.digests  # served from the cache, digests included
    assert CalibrationSet.load(cache).digests == built.digests
    sub = built.subset(5, seed=3)
    assert sub.digests == tuple(_digest(Path(s)) for s in sub.sources)
    # a set made from arrays has no files: not known, not invented
    assert CalibrationSet.from_images(built.images).digests is None


def test_a_cache_from_before_the_digests_is_rebuilt_not_served_without_them(
        photos: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "set.npz"
    built = build_calibration_set(photos[:6], PRE, require_fov=False, cache=cache, show_progress=False)
    with np.load(cache, allow_pickle=False) as z:
        images, meta = np.array(z["images"]), json.loads(str(z["meta"]))
    meta.pop("digests")  # as an older uopsl wrote it, for the same files and options (the same request key)
    np.savez(cache, images=images, meta=np.array(json.dumps(meta)))
    assert CalibrationSet.load(cache).digests is None  # what an old cache holds
    rebuilt = build_calibration_set(photos[:6], PRE, require_fov=False, cache=cache, show_progress=False)
    assert rebuilt.digests == built.digests


def test_calibrate_writes_the_digests_into_the_table_and_it_round_trips(photos: list[Path], tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    model = export_tiny_onnx(tmp_path / "tiny.onnx", num_classes=3, size=PRE.size)
    cset = build_calibration_set(photos[:8], PRE, require_fov=False, show_progress=False)
    table = calibrate(model, cset, method="minmax", out=tmp_path / "calibration.json", show_progress=False)
    assert table.image_digests == tuple(sorted(cset.digests or ()))
    loaded = CalibrationTable.load(tmp_path / "calibration.json")
    assert loaded.image_digests == table.image_digests
    raw = json.loads((tmp_path / "calibration.json").read_text())
    assert raw["image_digests"] == sorted(_digest(p) for p in photos[:8])
    assert not any(str(p.name) in json.dumps(raw) for p in photos[:8])  # digests, never names


def test_a_table_without_digests_reads_as_not_known_and_bad_digests_are_refused() -> None:
    old = _table(["0123456789abcdef"]).to_dict()
    del old["image_digests"]
    assert CalibrationTable.from_dict(old).image_digests is None
    with pytest.raises(ConfigError, match="image_digests must be hex sha256 prefixes"):
        _table(["not hex at all!!"])
    with pytest.raises(ConfigError, match="image_digests must be hex"):
        _table(["abc"])


# -- validate counts them -------------------------------------------------------------------------------------

def test_an_int8_file_judged_on_its_calibration_images_keeps_no_pass(
        photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bundle", _table([_digest(p) for p in photos[:CALIB]]))
    models = PatchedModels(image_keys, monkeypatch, cycled_labels(N))
    res = _validate(bundle, photos, models, tmp_path / "out")
    rep = res.report
    assert res.status == PASS  # the figures themselves are reported as measured
    int8, fp32 = _cand(rep, "model.int8.onnx"), _cand(rep, "model.onnx")
    assert int8["calibration_images"]["n_overlap"] == CALIB and int8["calibration_images"]["of"] == N
    assert int8["calibration_images"]["held_out"] is False
    assert int8["calibration_images"]["n_calibration_images"] == CALIB
    assert "calibration_images" not in fp32  # FP32 files are not calibrated
    note = next(n for n in rep["notes"] if "calibrated on" in n)
    assert note.startswith(f"{CALIB} of the {N} images judged (same file content) are among the {CALIB} images "
                           "model.int8.onnx was calibrated on (calibration.json)")
    # the FP32 PASS is recorded, the INT8 one is not, and the run is no release pass
    assert rep["record"]["recorded"] == ["ort-cpu:model.onnx"] == [fp32["name"]]
    over = {o["name"]: o["why"] for o in rep["record"]["not_recorded"]}
    assert over[int8["name"]].startswith(f"judged on {CALIB} of its {CALIB} calibration images")
    assert _recorded(bundle, "model.onnx") is not None and _recorded(bundle, "model.int8.onnx") is None
    assert rep["release_pass"] is False
    assert any(r.startswith(f"{int8['name']}: {CALIB} of the {N} images were among its {CALIB} calibration")
               for r in rep["release_pass_reasons"])
    assert "not recorded" in (res.html_path.read_text(encoding="utf-8"))


def test_its_fail_on_its_calibration_images_is_recorded(
        photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bundle", _table([_digest(p) for p in photos[:CALIB]]))
    models = PatchedModels(image_keys, monkeypatch, cycled_labels(N))
    models.files["model.int8.onnx"] = models.ref[:, ::-1].copy()  # every call changes
    res = _validate(bundle, photos, models, tmp_path / "out")
    assert _cand(res.report, "model.int8.onnx")["verdict"] == FAIL
    rec = _recorded(bundle, "model.int8.onnx")
    assert rec is not None and rec["verdict"] == FAIL


def test_held_out_images_are_said_to_be_held_out_and_the_pass_is_recorded(
        photos: list[Path], image_keys: dict[str, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # calibrated on other photographs than the N judged
    other = [hashlib.sha256(f"other {i}".encode()).hexdigest()[:SHORT_DIGEST_CHARS] for i in range(30)]
    bundle = _bundle(tmp_path / "bundle", _table(other))
    models = PatchedModels(image_keys, monkeypatch, cycled_labels(N))
    res = _validate(bundle, photos, models, tmp_path / "out")
    cal = _cand(res.report, "model.int8.onnx")["calibration_images"]
    assert cal["n_overlap"] == 0 and cal["held_out"] is True and cal["why_not_known"] is None
    assert not any("calibrated on" in n for n in res.report["notes"])
    rec = _recorded(bundle, "model.int8.onnx")
    assert rec is not None and rec["verdict"] == PASS
    assert res.report["release_pass"] is True


@pytest.mark.parametrize("case, why", [
    ("no table", "the bundle lists no calibration table"),
    ("no digests", "calibration.json does not record its images' digests"),
    ("another set", "model.int8.onnx was calibrated on another set than the bundle's calibration.json"),
    ("no fingerprint", "model.int8.onnx does not record the calibration set it was made with"),
])
def test_what_cannot_be_checked_says_why(photos: list[Path], tmp_path: Path, case: str, why: str) -> None:
    digests = [_digest(p) for p in photos[:CALIB]]
    table = {"no table": None, "no digests": _table(None), "another set": _table(digests, fingerprint="e" * 64),
             "no fingerprint": _table(digests)}[case]
    bundle = _bundle(tmp_path / "b", table, int8_fingerprint=None if case == "no fingerprint" else FINGERPRINT)
    got = calibration_overlaps(bundle, read_manifest(bundle), ["model.onnx", "model.int8.onnx"],
                               [hashlib.sha256(p.read_bytes()).hexdigest() for p in photos])
    assert set(got) == {"model.int8.onnx"}
    o = got["model.int8.onnx"]
    assert o.n_overlap is None and o.held_out is None and o.withhold() is None and o.note() is None
    assert o.why_not_known is not None and o.why_not_known.startswith(why), o.why_not_known


def test_an_engine_built_from_the_int8_file_is_checked_through_it(photos: list[Path], tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "b", _table([_digest(p) for p in photos[:CALIB]]))
    m = read_manifest(bundle)
    int8 = m.file("model.int8.onnx")
    (bundle / "model.int8.engine").write_bytes(b"engine stand-in")
    engine = describe_file(bundle, FileEntry("model.int8.engine", "engine", "int8",
                                             info={"source_onnx_sha256": int8.sha256, "precision": "int8"}))
    write_manifest(bundle, replace(m, files=(*m.files, engine)))
    got = calibration_overlaps(bundle, read_manifest(bundle), ["model.int8.engine"],
                               [hashlib.sha256(p.read_bytes()).hexdigest() for p in photos[:10]])
    assert got["model.int8.engine"].n_overlap == 10


# -- the review of session 56 ----------------------------------------------------------------------------------

def test_calibrating_again_replaces_a_table_without_digests(photos: list[Path], tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The advice 'calibrate and quantize again' did nothing: the old table (same model, same pixels) was reused
    without digests. Now it is recalibrated once to record them."""
    import logging

    import torch

    torch.manual_seed(0)
    model = export_tiny_onnx(tmp_path / "tiny.onnx", num_classes=3, size=PRE.size)
    cset = build_calibration_set(photos[:6], PRE, require_fov=False, show_progress=False)
    out = tmp_path / "calibration.json"
    table = calibrate(model, cset, method="minmax", out=out, show_progress=False)
    old = table.to_dict()
    old["image_digests"] = None  # as a uopsl before session 56 wrote it
    out.write_text(json.dumps(old), encoding="utf-8")
    with caplog.at_level(logging.INFO):
        again = calibrate(model, cset, method="minmax", out=out, show_progress=False)
    assert again.image_digests == tuple(sorted(cset.digests or ()))
    assert "does not record its images' digests" in caplog.text
    assert CalibrationTable.load(out).image_digests == again.image_digests
    # and once recorded, the table is reused as before
    caplog.clear()
    with caplog.at_level(logging.INFO):
        calibrate(model, cset, method="minmax", out=out, show_progress=False)
    assert "calibration skipped" in caplog.text


def test_whole_sha256_digests_in_a_table_still_match(photos: list[Path], tmp_path: Path) -> None:
    full = [hashlib.sha256(p.read_bytes()).hexdigest() for p in photos[:CALIB]]
    table = _table(full)
    assert all(len(d) == SHORT_DIGEST_CHARS for d in table.image_digests or ())
    bundle = _bundle(tmp_path / "b", table)
    got = calibration_overlaps(bundle, read_manifest(bundle), ["model.int8.onnx"], full)
    assert got["model.int8.onnx"].n_overlap == CALIB


def _refit(bundle: Path, fitted_on: dict[str, Any]) -> None:
    m = read_manifest(bundle)
    f = m.file("model.int8.onnx")
    write_manifest(bundle, replace(m, files=tuple(replace(x, info={**f.info, "fitted_on": fitted_on})
                                                  if x.path == f.path else x for x in m.files)))


@pytest.mark.parametrize("fitted, why", [
    ({"bias_correction": {"images": 32, "fingerprint": "a" * 64, "from_set": "b" * 64}},
     "model.int8.onnx: its bias_correction was fitted on images of another set than calibration.json's"),
    ({"rounding": {"images": 32, "fingerprint": "a" * 64}},
     "model.int8.onnx: its rounding does not record which set its images came from"),
    ({"rounding": {"images": 32, "fingerprint": "a" * 64, "from_set": FINGERPRINT}}, None),
])
def test_steps_fitted_on_another_set_make_the_check_unknown(photos: list[Path], tmp_path: Path,
                                                            fitted: dict[str, Any], why: str | None) -> None:
    """quantize --images may be another set than the table's: its bias correction, rounding and sensitivity
    pass then fitted images the table does not list, and a 'held out' verdict would be unfounded."""
    bundle = _bundle(tmp_path / "b", _table([_digest(p) for p in photos[:CALIB]]))
    _refit(bundle, fitted)
    got = calibration_overlaps(bundle, read_manifest(bundle), ["model.int8.onnx"],
                               [hashlib.sha256(p.read_bytes()).hexdigest() for p in photos])["model.int8.onnx"]
    if why is None:
        assert got.n_overlap == CALIB
    else:
        assert got.n_overlap is None and got.why_not_known is not None and got.why_not_known.startswith(why)
        assert got.withhold() is None  # not known is not an overlap: nothing is withheld for it


def test_quantize_records_the_set_each_step_drew_from(photos: list[Path], tmp_path: Path) -> None:
    import torch

    from uopsl.export.quantize import QuantizeConfig, quantize_model

    torch.manual_seed(0)
    model = export_tiny_onnx(tmp_path / "tiny.onnx", num_classes=3, size=PRE.size)
    cset = build_calibration_set(photos[:8], PRE, require_fov=False, show_progress=False)
    table = calibrate(model, cset, method="minmax", show_progress=False)
    q = quantize_model(model, table, tmp_path / "q.onnx", QuantizeConfig(variant="cpu"), calib_set=cset,
                       show_progress=False)
    assert q.fitted_on and all(v["from_set"] == cset.fingerprint for v in q.fitted_on.values())


def test_an_engine_calibrated_from_the_table_is_checked(photos: list[Path], tmp_path: Path) -> None:
    """TensorRT 8.x's legacy-cache route builds from the FP32 file with calibration.json's ranges: build-engine
    records the table's set fingerprint on the engine, and validate checks it."""
    bundle = _bundle(tmp_path / "b", _table([_digest(p) for p in photos[:CALIB]]))
    m = read_manifest(bundle)
    (bundle / "model.int8.engine").write_bytes(b"engine stand-in")
    engine = describe_file(bundle, FileEntry("model.int8.engine", "engine", "int8", info={
        "source_onnx_sha256": m.file("model.onnx").sha256, "int8_mode": "legacy-cache",
        "calibration_fingerprint": FINGERPRINT}))
    write_manifest(bundle, replace(m, files=(*m.files, engine)))
    got = calibration_overlaps(bundle, read_manifest(bundle), ["model.int8.engine"],
                               [hashlib.sha256(p.read_bytes()).hexdigest() for p in photos[:10]])
    assert got["model.int8.engine"].n_overlap == 10
