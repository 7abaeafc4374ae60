"""Bundle loading and verification: what a session-41 mutation audit of ``runtime/bundle.py`` and
``runtime/configs.py`` found unpinned. Each test names the single-point change (mutant id) it catches.

The audit put 91 single-point changes into a scratch copy of the two modules (manifest reading and its
refusals, the sha256/size checks of every file, links and odd names, the content checksum, format versions,
the operating thresholds and referral rule, the parity-record rules ``auto`` trusts, and the unknown-key check
of configs) and ran the test files that exercise them. Survivors that change what a user sees or what a
device accepts are pinned here; expected values are worked out by hand (file sizes and sha256 with hashlib,
the manifest checksum by a plain re-implementation of its canonical JSON), never by calling the code under
test another way. The bundles here are small folders of plain bytes: verification hashes files, it does not
parse them, so no model is exported.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from uopsl.runtime.bundle import (
    MANIFEST,
    PARITY_GATE_DEFAULTS,
    ClassSpec,
    FileEntry,
    Manifest,
    bundle_path_problem,
    describe_operating_point,
    parity_gates_problem,
    parity_reference_kind,
    parity_run_problem,
    parity_status,
    read_manifest,
    verify,
    verify_before_rewrite,
    verify_or_raise,
    write_manifest,
)
from uopsl.runtime.configs import config_from_dict
from uopsl.runtime.errors import BundleError, ConfigError
from uopsl.runtime.preprocess import PreprocessConfig

MODEL = b"stand-in model bytes: verification hashes a file, it does not parse it\n" * 7
BANK = b"\x93NUMPY stand-in class bank" + bytes(range(40))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _seal(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with its content checksum recomputed as a forger (or another writer) would: sha256 of the canonical
    JSON (sorted keys, no spaces) of every field but ``content_sha256``."""
    body = {k: v for k, v in raw.items() if k != "content_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return {**raw, "content_sha256": _sha(canonical)}


def _classes() -> tuple[ClassSpec, ...]:
    return (ClassSpec("normal", ("healthy retina",)), ClassSpec("dr", ("microaneurysms",), 0.4, referable=True))


def _manifest(files: tuple[FileEntry, ...] = (), **kw: Any) -> Manifest:
    return Manifest(classes=kw.pop("classes", _classes()), head=kw.pop("head", "sigmoid"),
                    preprocess=PreprocessConfig(), files=files, **kw)


def _bundle(tmp_path: Path, files: dict[str, bytes] | None = None) -> Path:
    """A bundle folder holding ``files`` (default: model.onnx and a class bank in a subfolder), listed with the
    sizes and sha256 hashlib gives."""
    files = files if files is not None else {"model.onnx": MODEL, "bank/class_bank.npy": BANK}
    root = tmp_path / "b"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    entries = tuple(FileEntry(name, "onnx" if name.endswith(".onnx") else "other", sha256=_sha(data), size=len(data))
                    for name, data in files.items())
    write_manifest(root, _manifest(entries))
    return root


def _raw(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))


def _put_raw(bundle: Path, raw: dict[str, Any], seal: bool = True) -> None:
    (bundle / MANIFEST).write_text(json.dumps(_seal(raw) if seal else raw), encoding="utf-8")


def _bad(bundle: Path) -> dict[str, str]:
    return {c.path: c.reason for c in verify(bundle) if not c.ok}


# -- verification of the files ---------------------------------------------------------------------------------
def test_a_folder_where_a_file_is_listed_is_reported_missing_not_raised(tmp_path: Path) -> None:
    """A72 (``is_file`` -> ``exists``): a folder standing where model.onnx is listed made verify raise
    IsADirectoryError instead of reporting the file, so `uopsl-screen verify` crashed rather than naming it."""
    b = _bundle(tmp_path)
    (b / "model.onnx").unlink()
    (b / "model.onnx").mkdir()
    assert _bad(b) == {"model.onnx": "missing"}


def test_a_link_anywhere_on_the_way_to_a_file_fails_verification(tmp_path: Path) -> None:
    """A78 (only the last part of a listed path checked for links): a bundle whose ``bank`` folder is a link to a
    folder elsewhere verified, though the class bank read is not the one copied with the bundle."""
    b = _bundle(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (b / "bank").rename(elsewhere)
    os.symlink(elsewhere, b / "bank")
    assert (b / "bank" / "class_bank.npy").read_bytes() == BANK  # the very bytes listed: only the link is wrong
    assert list(_bad(b)) == ["bank/class_bank.npy"]
    assert _bad(b)["bank/class_bank.npy"].startswith("path leaves the bundle folder")


def test_an_entry_without_a_recorded_size_is_judged_by_its_sha256(tmp_path: Path) -> None:
    """A88 (``f.size and`` dropped): an entry whose size was not recorded (0, FileEntry's default: a hand-made or
    older manifest) failed as "grown: appended to or replaced" although its sha256 matches."""
    b = _bundle(tmp_path)
    raw = _raw(b)
    raw["files"][0]["size"] = 0
    _put_raw(b, raw)
    assert _bad(b) == {}
    (b / "model.onnx").write_bytes(MODEL + b"x")
    assert _bad(b) == {"model.onnx": "sha256 differs from the manifest (modified or corrupted)"}

def test_a_manifest_read_earlier_must_still_be_what_the_file_holds(tmp_path: Path) -> None:
    """A75 (the comparison with the file dropped): files were hashed against a manifest parsed earlier while the
    checksum was judged on the file as it is now, so a manifest swapped in between passed as the original."""
    b = _bundle(tmp_path)
    before = read_manifest(b)
    raw = _raw(b)
    raw["classes"][1]["threshold"] = 0.9
    _put_raw(b, raw)
    with pytest.raises(BundleError, match="changed since it was read; read the bundle again"):
        verify(b, before)
    with pytest.raises(BundleError, match="changed since it was read"):
        verify_or_raise(b, before)


def test_an_empty_content_checksum_is_called_missing(tmp_path: Path) -> None:
    """A77 (only an absent key counted as no checksum): a manifest whose checksum was blanked was said to be
    "edited or corrupted" instead of "no content checksum ... re-export"."""
    b = _bundle(tmp_path)
    _put_raw(b, {**_raw(b), "content_sha256": ""}, seal=False)
    assert _bad(b)[MANIFEST].startswith("no content checksum")


def test_a_manifest_whose_keys_another_writer_ordered_differently_still_verifies(tmp_path: Path) -> None:
    """A68 (the content hash over the keys in file order): a manifest rewritten with the same content in another
    key order (a signing tool, a JSON pretty-printer) failed its own checksum on every device."""
    b = _bundle(tmp_path)
    raw = _raw(b)
    reordered = {k: raw[k] for k in sorted(raw, reverse=True)}
    assert list(reordered) != list(raw)
    (b / MANIFEST).write_text(json.dumps(reordered, indent=1), encoding="utf-8")
    assert _bad(b) == {}


def test_rewriting_a_clean_bundle_is_not_taken_for_a_repair(tmp_path: Path) -> None:
    """A79 (``bad and`` dropped): on a bundle where every file verifies, verify_before_rewrite said a stopped run
    had left the file half-written (True), and `uopsl calibrate` recomputed a current calibration table."""
    b = _bundle(tmp_path)
    assert verify_before_rewrite(b, "model.onnx") is False


# -- reading the manifest ----------------------------------------------------------------------------------------
def _edited(tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    b = _bundle(tmp_path)
    raw = _raw(b)
    edit(raw)
    _put_raw(b, raw)
    return b


@pytest.mark.parametrize(("mutant", "edit", "message"), [
    ("A45", lambda raw: raw.__setitem__("format_version", True), "format_version must be a whole number"),
    ("A47", lambda raw: raw.pop("format_version"), "the manifest has no format_version"),
    ("A50", lambda raw: raw.pop("classes"), "the manifest has no 'classes' field"),
    ("A51", lambda raw: raw.__setitem__("site_map_size", 7), r"malformed manifest \(TypeError"),
    # Session 57: entries of classes and files are checked for their fields before they are built (a flipped
    # byte in a field name read "TypeError: ClassSpec.__init__() got an unexpected keyword argument ...").
    ("s57-list", lambda raw: raw.__setitem__("classes", [7]), "the manifest's 'classes' must be a list of objects"),
    ("s57-unknown", lambda raw: raw["classes"][1].__setitem__("seen_in_tsaining", True),
     r"fields this uopsl .* does not know: classes\[1\]\.seen_in_tsaining; the bundle was most likely made by a newer"),
    ("s57-missing", lambda raw: raw["files"][0].pop("kind"), r"files\[0\] has no 'kind' field"),
    ("A52", lambda raw: raw["preprocess"].__setitem__("sharpen", 1),
     r"fields this uopsl [0-9.]+ does not know: preprocess.sharpen; the bundle was most likely made by a newer"),
    ("A54", lambda raw: raw.__setitem__("head", "relu"), "head must be 'sigmoid' or 'softmax', got 'relu'"),
    ("A55", lambda raw: raw.__setitem__("referral_rule", "majority"),
     "referral_rule must be 'any_referable' or 'referable_sum', got 'majority'"),
    ("A56", lambda raw: raw.__setitem__("classes", []), "the manifest lists no classes"),
    # A session-45 review: these read "(TypeError: '<=' not supported ...)" and "(KeyError: 'files')".
    ("R45a", lambda raw: raw["preprocess"].__setitem__("size", "256"),
     "preprocessing parameter 'size' must be a whole number, got '256'"),
    ("R45b", lambda raw: raw["preprocess"].__setitem__("size", True),
     "preprocessing parameter 'size' must be a whole number, got True"),
    ("R45c", lambda raw: raw.__delitem__("files"), "the manifest has no 'files' field"),
    ("A59", lambda raw: raw.__setitem__("site_map_size", [8, 8, 8]), "site_map_size must be two whole numbers"),
    ("A60", lambda raw: raw.__setitem__("output_names", ["probs", "", "site_maps"]), "output_names must be three"),
    ("A04", lambda raw: raw["classes"][0].__setitem__("name", "   "), "a class name must be a non-empty string"),
    ("A05", lambda raw: raw["classes"][0].__setitem__("descriptions", ["ok", 3]), "descriptions must be a list of strings"),
    ("A11", lambda raw: raw["files"][0].__setitem__("info", ["x"]), "info must be an object, got list"),
    ("A10", lambda raw: raw["files"][0].__setitem__("sha256", None), "sha256 must be a string, got None"),
    ("A09", lambda raw: raw["files"][0].__setitem__("size", True), "size must be a whole number of bytes"),
])
def test_a_manifest_a_device_cannot_screen_with_is_refused_naming_the_field(
        tmp_path: Path, mutant: str, edit: Callable[[dict[str, Any]], None], message: str) -> None:
    """A04 A05 A09 A10 A11 A45 A47 A50 A51 A52 A54 A55 A56 A59 A60 (each check, or the exception class it
    turns into a BundleError, removed): a resealed manifest with such a field either loaded (a bundle screening
    under a rule nobody set, a "true" format version, a use statement an older runtime cannot show) or crashed
    the device with a bare KeyError / TypeError / ConfigError instead of "manifest.json: ... re-export"."""
    b = _edited(tmp_path, edit)
    with pytest.raises(BundleError, match=message) as err:
        read_manifest(b)
    assert str(err.value).startswith(str(b / MANIFEST)), mutant


def test_a_manifest_that_is_no_json_object_is_a_bundle_error(tmp_path: Path) -> None:
    """A67 (the object check dropped): a manifest holding a JSON list crashed `uopsl-screen` with AttributeError
    from the parser, naming no file."""
    b = _bundle(tmp_path)
    (b / MANIFEST).write_bytes(b"[1, 2, 3]")
    with pytest.raises(BundleError, match="manifest.json: expected a JSON object, got list"):
        read_manifest(b)


def test_a_manifest_that_is_a_folder_is_a_bundle_error(tmp_path: Path) -> None:
    """A65 (OSError not caught): a bundle whose manifest.json is a folder (a copy tool's mishap) crashed with
    IsADirectoryError instead of "unreadable manifest ... re-export the bundle"."""
    b = _bundle(tmp_path)
    (b / MANIFEST).unlink()
    (b / MANIFEST).mkdir()
    with pytest.raises(BundleError, match="manifest.json: unreadable manifest"):
        read_manifest(b)


def test_a_manifest_of_exactly_the_size_limit_is_read(tmp_path: Path) -> None:
    """A64 (``>`` -> ``>=``): the limit is 16 MiB; a manifest of exactly 16 MiB (parity records are what grow) was
    refused as too large."""
    b = _bundle(tmp_path)
    text = json.dumps(_raw(b))
    limit = 16 << 20
    (b / MANIFEST).write_bytes(text[:-1].encode("utf-8") + b" " * (limit - len(text)) + b"}")
    assert (b / MANIFEST).stat().st_size == limit
    assert read_manifest(b).class_names == ("normal", "dr")


def test_the_manifest_file_given_for_its_folder_names_the_folder(tmp_path: Path) -> None:
    """A62 (the hint dropped): `uopsl-screen run bundle/manifest.json ...` said only "not a bundle folder"; the
    message names the folder to give instead."""
    b = _bundle(tmp_path)
    with pytest.raises(BundleError, match=f"not a bundle folder .*; give its folder, {b}$"):
        read_manifest(b / MANIFEST)


# -- classes, files and the manifest as the exporter builds them -------------------------------------------------
def test_a_threshold_of_zero_is_a_valid_operating_point() -> None:
    """A01 (``0 <= t`` -> ``0 < t``): a class the maker wants shown on every photograph (threshold 0, the
    saturated-score edge opposite to 1) was refused, so its bundle could be neither exported nor loaded."""
    assert ClassSpec("always_shown", threshold=0).threshold == 0.0
    positive, refer = _manifest(classes=(ClassSpec("always_shown", threshold=0.0, referable=True),)).decide(
        np.array([[0.0]]))
    assert positive.tolist() == [[True]] and refer.tolist() == [True]


def test_numpy_flags_become_plain_booleans() -> None:
    """A07 (the bool() conversion dropped): flags taken from a numpy array (a checkpoint's ``referable``) stayed
    numpy booleans; write_manifest hashes them as the text "True" and writes them as true, so the bundle failed
    its own content checksum on every device."""
    c = ClassSpec("dr", referable=np.bool_(True), seen_in_training=np.bool_(False))
    assert (type(c.referable), type(c.seen_in_training)) == (bool, bool)
    assert (c.referable, c.seen_in_training) == (True, False)


def test_a_file_name_with_a_nul_character_is_refused() -> None:
    """A14 (the NUL check dropped): a listed name holding a NUL character made verify crash with ValueError from
    the operating system instead of refusing the manifest by name."""
    assert bundle_path_problem("model\x00.onnx") == "a file name may not hold a backslash, a colon or a NUL character"
    with pytest.raises(BundleError, match="NUL character"):
        FileEntry("model\x00.onnx", "onnx")


def test_every_description_of_a_class_is_read_back(tmp_path: Path) -> None:
    """A89 (descriptions cut when read): the phrases a prototype came from, shown by `info` and the report,
    lost all but the first on the device."""
    b = _bundle(tmp_path)
    raw = _raw(b)
    raw["classes"][1]["descriptions"] = ["microaneurysms", "dot haemorrhages", "hard exudates"]
    _put_raw(b, raw)
    assert read_manifest(b).classes[1].descriptions == ("microaneurysms", "dot haemorrhages", "hard exudates")


@pytest.mark.parametrize(("threshold", "ok"), [(0.0, True), (2.0, True), (2.5, False)])
def test_the_referral_threshold_may_be_anything_from_zero_to_the_number_of_classes(threshold: float,
                                                                                   ok: bool) -> None:
    """A57 (upper limit 1), A58 (``0 <`` instead of ``0 <=``): the summed probability of K sigmoid classes goes up
    to K, so a referable_sum threshold of 2 on two classes is a valid (strict) rule, and 0 refers everyone;
    both were refused."""
    m = _manifest(referral_rule="referable_sum", referral_threshold=threshold)
    assert (m.problem() is None) is ok
    if not ok:
        assert m.problem() == ("referral_threshold must be a number between 0 and the number of classes (2), "
                               "got 2.5")


# -- decisions ---------------------------------------------------------------------------------------------------
def test_probabilities_of_another_class_count_are_refused_not_broadcast() -> None:
    """A40 (the class-count check dropped): a (N, 1) output on a two-class manifest broadcast over both classes,
    so one score was taken as every class's and referrals were made on it without a word."""
    with pytest.raises(BundleError, match=r"probabilities must be \(N, 2\), got shape \(1, 1\)"):
        _manifest().decide(np.array([[0.9]]))


def test_float32_rounding_just_outside_zero_and_one_is_still_a_probability() -> None:
    """A41 (the 1e-6 tolerance dropped): a softmax whose float32 sum rounds to 1.0000001, or a sigmoid at -1e-7,
    stopped the whole run as "output names do not fit this model"."""
    positive, refer = _manifest().decide(np.array([[1.0 + 5e-7, -5e-7], [0.2, 1.0 + 5e-7]]))
    assert positive.tolist() == [[True, False], [False, True]] and refer.tolist() == [False, True]


# -- what `info` and the report show ---------------------------------------------------------------------------
def test_a_blank_display_name_is_no_display_name() -> None:
    """A80 (``strip`` dropped): a class file's blank display name was shown in the report instead of the
    class's own words."""
    m = _manifest(notes={"class_display": {"dr": "   ", "normal": "No retinopathy"}})
    assert (m.display_name("dr"), m.display_name("normal")) == (None, "No retinopathy")


@pytest.mark.parametrize(("point", "words"), [
    ({"method": "target_sensitivity", "target_sensitivity": None, "n_positive": 5, "n_negative": 9,
      "source": "validation data"}, "target_sensitivity on 5 positive / 9 negative validation images"),
    ({"method": "default", "source": "chosen on no data"}, "chosen on no data"),
])
def test_how_a_threshold_was_chosen_reads_as_recorded(point: dict[str, Any], words: str) -> None:
    """A83 (a missing target read as a number): `uopsl-screen info` crashed with TypeError on a target-sensitivity
    record that does not give its target, instead of naming the method."""
    assert describe_operating_point(point) == words


# -- configs -----------------------------------------------------------------------------------------------------
def test_a_config_that_leaves_fields_to_their_defaults_is_read() -> None:
    """C02 (the unknown-key check turned round: the fields a dict lacks taken as unknown): a stored config that
    leaves fields at their defaults (a manifest or checkpoint written before a field existed, a user's short
    preprocessing file) was refused as "unknown parameters", naming the very fields it lacked."""
    cfg = config_from_dict(PreprocessConfig, {"size": 64, "clahe": True}, "preprocessing")
    assert (cfg.size, cfg.clahe, cfg.clahe_grid) == (64, True, PreprocessConfig().clahe_grid)
    with pytest.raises(ConfigError, match=r"unknown preprocessing parameters \['clahe_clipp'\]; expected a subset"):
        config_from_dict(PreprocessConfig, {"clahe_clipp": 2.0}, "preprocessing")


def test_a_stored_config_value_of_the_wrong_kind_is_refused_naming_its_field() -> None:
    """Session 45 (a review): a size written as "256" failed inside a comparison ("'<=' not supported between
    instances of 'int' and 'str'"); true passed as a size of 1. numpy's numbers still count."""
    import numpy as np

    from uopsl.runtime.quality import QualityConfig

    for d, said in [({"size": "256"}, "'size' must be a whole number, got '256'"),
                    ({"size": True}, "'size' must be a whole number, got True"),
                    ({"size": 64.0}, "'size' must be a whole number, got 64.0"),
                    ({"clahe": 1}, "'clahe' must be true or false, got 1")]:
        with pytest.raises(ConfigError, match="preprocessing parameter " + said):
            config_from_dict(PreprocessConfig, d, "preprocessing")
    with pytest.raises(ConfigError, match="quality parameter 'min_sharpness' must be a number, got '0.04'"):
        config_from_dict(QualityConfig, {"min_sharpness": "0.04"}, "quality")
    cfg = config_from_dict(PreprocessConfig, {"size": np.int64(64), "clahe": np.bool_(True)}, "preprocessing")
    assert cfg.size == 64 and cfg.clahe
    assert config_from_dict(QualityConfig, {"min_brightness": 12}, "quality").min_brightness == 12


# -- production defect -------------------------------------------------------------------------------------------
def test_a_manifest_written_with_numpy_numbers_verifies(tmp_path: Path) -> None:
    """Found beside A07 (a production defect, fixed in session 41): write_manifest computed the content checksum
    over ``json.dumps(d, default=str)`` (a numpy int64 became the string "3", a numpy bool "True") while write_json
    writes the number 3 and ``true``, so a manifest whose notes held a numpy value was written failing its own
    checksum: every device refused the bundle as "edited or corrupted". It now hashes what it writes."""
    root = tmp_path / "b"
    root.mkdir()
    (root / "model.onnx").write_bytes(MODEL)
    entry = FileEntry("model.onnx", "onnx", "fp32", sha256=_sha(MODEL), size=len(MODEL))
    write_manifest(root, _manifest((entry,), notes={"n_validation_images": np.int64(3), "flag": np.True_}))
    assert _bad(root) == {}
    written = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    assert written["notes"]["n_validation_images"] == 3 and written["notes"]["flag"] is True


# -- parity records: what `auto` trusts ----------------------------------------------------------------------------
FP32_SHA = "ab" * 32


def _run(**kw: Any) -> dict[str, Any]:
    """A passing per-backend record as `uopsl validate --checkpoint` writes it (300 images, the default gates plus
    issue 4's FP32 tolerance, judged against the PyTorch checkpoint)."""
    return {"passed": True, "verdict": "PASS", "reasons": [], "n_images": 300,
            "gates": {**PARITY_GATE_DEFAULTS, "max_prob_diff": 1e-4}, "data": {"spec": "synthetic:test"},
            "reference": "PyTorch", "reference_kind": "pytorch", "reference_source": "pytorch:fp-1",
            "created": "2026-12-01T10:00:00+00:00", **kw}


def _entry(runs: dict[str, Any]) -> FileEntry:
    info = {"parity": {"sha256": FP32_SHA, "backends": runs}}
    return FileEntry("model.onnx", "onnx", "fp32", sha256=FP32_SHA, info=info)


def test_a_gate_off_by_default_must_still_be_a_number_when_given() -> None:
    """A21 (the check of gates that are off by default dropped): a record whose max_prob_diff was the string
    "0.0001" (a hand-written or foreign record) counted as gated by the defaults."""
    gates = {**PARITY_GATE_DEFAULTS, "max_prob_diff": "0.0001"}
    assert parity_gates_problem(gates) == "gates looser than the defaults: max_prob_diff='0.0001'"
    assert parity_gates_problem({**PARITY_GATE_DEFAULTS, "max_prob_diff": 1e-4}) is None


def test_a_gate_or_image_count_that_is_not_a_finite_number_is_looser() -> None:
    """A22 (``isfinite`` dropped), A23 (a boolean taken for a number): a NaN flip gate compares false with its
    default and passed as "stricter", ``min_top1_agreement: true`` read as 1.0, and an infinite image count
    crashed the check with OverflowError; each must be named as looser / too few."""
    nan = float("nan")
    assert parity_gates_problem({**PARITY_GATE_DEFAULTS, "max_flip_rate": nan}) == (
        "gates looser than the defaults: max_flip_rate=nan (expected a number)")
    assert parity_gates_problem({**PARITY_GATE_DEFAULTS, "min_top1_agreement": True}) == (
        "gates looser than the defaults: min_top1_agreement=True (expected a number)")
    assert parity_run_problem(dict(PARITY_GATE_DEFAULTS), float("inf")) == (
        "only inf images (a pass counts from 100; validate on more images)")


@pytest.mark.parametrize(("record", "kind"), [
    ({"reference_source": "onnx:model.onnx@0123456789ab on ort-cpu"}, "onnx"),  # A24: the source alone says ONNX
    ({"reference_kind": "pytorch", "reference_source": "pytorch"}, "pytorch"),  # A25
    ({"reference_kind": "tflite", "reference_fingerprint": "fp-1"}, "unknown"),  # A26: a kind of its own
    ({"reference_source": "", "reference_fingerprint": "fp-1"}, "unknown"),  # A26: a source, yet no kind
    ({"reference_fingerprint": "fp-1"}, "pytorch"),  # before kinds: the checkpoint's fingerprint
])
def test_what_a_record_was_judged_against(record: dict[str, Any], kind: str) -> None:
    """A24 (an ``onnx:`` source without a kind not read as ONNX): such a PASS skipped the chain check to the
    reference file; A25 (the bare source "pytorch" refused); A26 (``and`` -> ``or``): a record of another declared
    kind that kept a fingerprint was taken for a PyTorch-judged one."""
    assert parity_reference_kind(record) == kind


def test_an_incomplete_verdict_is_no_pass_even_where_passed_says_true() -> None:
    """A32 (``or`` -> ``and``): a record with ``passed: true`` but verdict INCOMPLETE (not shown at 95 %) let
    `auto` run the INT8 file as if it had passed."""
    ok, why = parity_status(_entry({"ort-cpu": _run(verdict="INCOMPLETE", reasons=["flip bound 0.02 > 0.005"])}),
                            "ort-cpu")
    assert not ok and why == "model.onnx was incomplete parity validation on ort-cpu (flip bound 0.02 > 0.005)"


def test_a_record_with_no_backend_is_no_record() -> None:
    """A37 (an empty ``backends`` taken as a record): ``{"backends": {}}`` made every backend "passed" when all
    recorded backends must pass (backend=None), with nothing validated."""
    ok, why = parity_status(_entry({}))
    assert not ok and why == "model.onnx has no parity record (run `uopsl validate` on this bundle)"
