"""Manifest fields a device must not take on trust, and files a bundle folder holds beside its listed ones.

Session 41's bundle audit found manifests that loaded and then failed later, or loaded wrong: ``notes`` that is
not an object (an AttributeError at the first display name), an ``opset`` or ``input_name`` of any type, one
description given as a bare string (read as its characters), a file entry whose kind or precision no code knows
(never chosen, or an INT8 file judged as a float one), and a missing ``format_version`` reported as "version
-1". It also noted that ``verify`` says nothing of files the manifest does not list. The bundles here are small
folders of plain bytes: verification hashes files, it does not parse them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from uopsl.runtime.bundle import (
    MANIFEST,
    MANIFEST_LOCK,
    ClassSpec,
    FileEntry,
    Manifest,
    read_manifest,
    unlisted_files,
    write_manifest,
)
from uopsl.runtime.cli import main as screen_main
from uopsl.runtime.errors import BundleError
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.runtime.signing import SIGNATURE_FILE

MODEL = b"stand-in model bytes\n" * 5


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(**kw: Any) -> Manifest:
    files = (FileEntry("model.onnx", "onnx", "fp32", sha256=_sha(MODEL), size=len(MODEL)),)
    return Manifest(classes=(ClassSpec("normal", ("healthy retina",)), ClassSpec("dr", ("microaneurysms",), 0.4, True)),
                    head="sigmoid", preprocess=PreprocessConfig(), files=files, **kw)


def _bundle(tmp_path: Path) -> Path:
    root = tmp_path / "b"
    root.mkdir()
    (root / "model.onnx").write_bytes(MODEL)
    write_manifest(root, _manifest())
    return root


def _resealed(bundle: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit the manifest and recompute its content checksum as a writer would (sha256 of the canonical JSON of
    every other field), so only the field check can refuse it."""
    raw = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    edit(raw)
    body = {k: v for k, v in raw.items() if k != "content_sha256"}
    raw["content_sha256"] = _sha(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    (bundle / MANIFEST).write_text(json.dumps(raw), encoding="utf-8")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda raw: raw.__setitem__("notes", ["a", "list"]), "notes must be an object, got list"),
    (lambda raw: raw.__setitem__("opset", "17"), "opset must be a whole number >= 1, got '17'"),
    (lambda raw: raw.__setitem__("opset", True), "opset must be a whole number >= 1, got True"),
    (lambda raw: raw.__setitem__("opset", 0), "opset must be a whole number >= 1, got 0"),
    (lambda raw: raw.__setitem__("input_name", ""), "input_name must be a non-empty string, got ''"),
    (lambda raw: raw.__setitem__("input_name", 3), "input_name must be a non-empty string, got 3"),
    (lambda raw: raw.__setitem__("input_name", "probs"), "input_name 'probs' is also an output name"),
    (lambda raw: raw.__setitem__("model_name", 7), "model_name must be a string, got 7"),
    (lambda raw: raw.__setitem__("created", None), "created must be a string, got None"),
    (lambda raw: raw["classes"][1].__setitem__("descriptions", "microaneurysms"),
     "descriptions must be a list of strings, got one string 'microaneurysms'; put it in a list"),
    (lambda raw: raw["classes"][1].__setitem__("descriptions", {"a": 1}), "descriptions must be a list of strings"),
    (lambda raw: raw["files"][0].__setitem__("kind", "onnx_int8"), "kind must be one of onnx, engine, calibration"),
    (lambda raw: raw["files"][0].__setitem__("precision", "int9"), "precision must be one of fp32, fp16"),
    (lambda raw: raw["files"][0].__setitem__("precision", None), "precision must be one of .*, got None"),
    (lambda raw: raw.pop("format_version"), "the manifest has no format_version"),
])
def test_a_manifest_field_no_code_can_use_is_refused_on_reading(
        tmp_path: Path, edit: Callable[[dict[str, Any]], None], message: str) -> None:
    """Each edit used to load: a device then crashed at the first use of the field (notes.get, a precision's
    startswith), screened with a description bank of single letters, or never chose the file; a missing
    format_version was reported as "bundle format version -1 is not supported"."""
    b = _bundle(tmp_path)
    _resealed(b, edit)
    with pytest.raises(BundleError, match=message) as err:
        read_manifest(b)
    assert str(err.value).startswith(str(b / MANIFEST))
    assert "re-export the bundle" in str(err.value)


def test_the_exported_fields_still_load_and_descriptions_come_back_as_tuples(tmp_path: Path) -> None:
    b = _bundle(tmp_path)
    m = read_manifest(b)
    made = _manifest()
    assert (m.classes, m.files, m.opset, m.input_name, m.notes) == (made.classes, made.files, 17, "image", {})
    assert m.classes[1].descriptions == ("microaneurysms",)
    assert ClassSpec("dr", ["a", "b"]).descriptions == ("a", "b")  # a list made in code is kept, as a tuple


def test_a_class_made_in_code_with_one_bare_description_is_refused() -> None:
    with pytest.raises(BundleError, match="class 'dr': descriptions must be a list of strings, got one string"):
        ClassSpec("dr", "microaneurysms")  # type: ignore[arg-type]


def test_a_file_entry_made_in_code_with_an_unknown_precision_is_refused() -> None:
    with pytest.raises(BundleError, match="file entry 'model.onnx': precision must be one of"):
        FileEntry("model.onnx", "onnx", "int4")  # type: ignore[arg-type]
    for precision in ("fp32", "fp16", "int8-qdq-u8", "int8-qdq-s8", "int8", "none"):
        assert FileEntry("m", "other", precision).precision == precision  # type: ignore[arg-type]


def test_unlisted_files_are_named_and_the_bundles_own_files_are_not(tmp_path: Path) -> None:
    b = _bundle(tmp_path)
    assert unlisted_files(b, read_manifest(b)) == []
    (b / MANIFEST_LOCK).write_bytes(b"")
    (b / SIGNATURE_FILE).write_text("{}", encoding="utf-8")
    (b / "README.txt").write_text("notes", encoding="utf-8")
    (b / "engines").mkdir()
    (b / "engines" / "model.fp16.engine").write_bytes(b"plan")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"x")
    os.symlink(outside, b / "linked")
    got = unlisted_files(b, read_manifest(b), own=(SIGNATURE_FILE,))
    assert got == ["README.txt", "engines/model.fp16.engine", "linked"]  # the link named, not followed
    assert "signature.json" in unlisted_files(b, read_manifest(b))  # own names only when the caller gives them


def test_screen_verify_names_unlisted_files_without_failing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file copied in beside the listed ones is neither checked nor used; `uopsl-screen verify` said nothing of
    it, so a model dropped in by hand could be taken as verified."""
    b = _bundle(tmp_path)
    assert screen_main(["verify", str(b)]) == 0
    assert "not in the manifest" not in capsys.readouterr().err
    (b / "model.int8.onnx").write_bytes(b"copied in by hand")
    assert screen_main(["verify", str(b)]) == 0
    err = capsys.readouterr().err
    assert ("note: 1 file(s) in the bundle folder are not in the manifest, so nothing checks or uses them: "
            "model.int8.onnx;") in err
    assert "all 2 files verified" in err


def test_screen_verify_does_not_ask_to_delete_quantizes_own_records(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``uopsl quantize`` writes ``model.int8.quantize.json`` beside the INT8 file it adds, unlisted by design
    (docs/deployment.md); ``verify`` told users to delete it on every quantized bundle (session 47's review).
    A record of no listed ONNX file is still named."""
    b = _bundle(tmp_path)
    (b / "model.quantize.json").write_text("{}", encoding="utf-8")  # model.onnx's (the bundle's FP32 file)
    (b / "model.int8.quantize.json").write_text("{}", encoding="utf-8")  # no model.int8.onnx is listed
    assert screen_main(["verify", str(b)]) == 0
    err = capsys.readouterr().err
    assert "1 file(s) in the bundle folder are not in the manifest" in err
    assert "uses them: model.int8.quantize.json;" in err
