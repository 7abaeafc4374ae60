"""Mutation audit (session 39) of the screening run's results folder and the printable report.

Audited: ``runtime/results.py`` (the rows of ``results.jsonl``, resumption, the folder's model record,
``results.csv``) and ``runtime/report.py`` (``report.html``, the page a clinic reads). Each test pins a
behaviour that a single-point bug (the audit's mutant ids, named in each docstring) slipped past the rest
of the suite with. Rows are written by hand, so the file needs no model, no photographs of the TVHL set and
no browser; every expected value is worked out in the test (a hand-made table, a byte string, a rule of the
module docstring), never read back from the code under test.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from uopsl.runtime.bundle import ClassSpec, FileEntry, Manifest
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.runtime.reasons import REASON_TEXT, order_reasons
from uopsl.runtime.report import find_duplicates, render_report
from uopsl.runtime.results import (
    JSONL,
    RUN_JSON,
    ModelIdentity,
    ResultStore,
    is_final,
    model_sha256,
    write_csv,
)

CLASSES = (
    ClassSpec("normal", threshold=0.5, referable=False),
    ClassSpec("npdr", threshold=0.4, referable=True),
    ClassSpec("dme", threshold=0.3, referable=True),
)
NAMES = tuple(c.name for c in CLASSES)


def _manifest(**kw: object) -> Manifest:
    base: dict[str, object] = dict(classes=CLASSES, head="sigmoid", preprocess=PreprocessConfig(size=64),
                                   files=(FileEntry("model.onnx", "onnx", "fp32", sha256="a" * 64),),
                                   model_name="audit")
    base.update(kw)
    return Manifest(**base)  # type: ignore[arg-type]


def _jsonl(out: Path, *rows: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / JSONL).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _csv_rows(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8-sig")), delimiter=delimiter))


# -- which model a folder belongs to -------------------------------------------------------------------------
def test_a_model_with_other_weights_is_another_model_and_is_refused_the_folder(tmp_path: Path) -> None:
    """M03: ``model_sha256`` covers "the sha256 of every model file". A bundle retrained to the same classes and
    thresholds differs only there; hashing the file list without the checksums let its rows go into the old
    model's folder, two models' results mixed in one CSV and report. Records that do not change a decision
    (notes, the creation time, the manifest's own hash) still leave the model the same."""
    old = _manifest()
    retrained = replace(old, files=(FileEntry("model.onnx", "onnx", "fp32", sha256="b" * 64),))
    assert model_sha256(retrained) != model_sha256(old)
    assert model_sha256(replace(old, notes={"validated": "again"}, created="2026-12-01T00:00:00+00:00",
                                content_sha256="f" * 64)) == model_sha256(old)

    out = tmp_path / "out"
    with ResultStore(out, ModelIdentity("1" * 64, "audit", NAMES, model_sha256=model_sha256(old))) as store:
        store.append([{"key": "/p/a.jpg|10|1", "status": "ok", "bundle_sha256": "1" * 64,
                       "model_sha256": model_sha256(old)}])
    with pytest.raises(ConfigError, match="another model"):
        ResultStore(out, ModelIdentity("2" * 64, "audit", NAMES, model_sha256=model_sha256(retrained)))


def test_rows_without_their_own_model_record_belong_to_the_model_run_json_names(tmp_path: Path) -> None:
    """M22: a row that carries no model hash of its own (a uopsl that recorded the model only in ``run.json``)
    belongs to the model ``run.json`` names: that model reopens its folder to resume, another is refused.
    Counting such rows as unrecorded refused every rerun of such a folder."""
    out = tmp_path / "out"
    _jsonl(out, {"key": "/p/a.jpg|10|1", "status": "ok"})
    (out / RUN_JSON).write_text(json.dumps({"model_sha256": "m" * 64, "bundle_sha256": "1" * 64}))
    ResultStore(out, ModelIdentity("1" * 64, "audit", NAMES, model_sha256="m" * 64)).close()
    with pytest.raises(ConfigError, match="another model"):
        ResultStore(out, ModelIdentity("2" * 64, "audit", NAMES, model_sha256="n" * 64))


# -- rows that are final, rows that are damaged ----------------------------------------------------------------
def test_only_errors_of_the_files_own_bytes_are_final() -> None:
    """M08: an error row is final (a rerun skips the file) only when it has reasons and every one is about the
    file's content. An error row without reasons (an older results file) is tried again."""
    assert is_final("ok", []) and is_final("ungradable", ["blurred"])
    assert is_final("error", ["too_small"]) and is_final("error", ["undecodable", "too_large"])
    assert not is_final("error", [])
    assert not is_final("error", ["undecodable", "unreadable"])


def test_a_row_of_an_earlier_preprocessing_version_is_screened_again(tmp_path: Path) -> None:
    """M33: a final row written under another preprocessing version is not done (the same file may give other
    pixels now); one of this version is."""
    out = tmp_path / "out"
    mark = {"status": "ok", "model_sha256": "m" * 64}
    _jsonl(out, {"key": "/p/a.jpg|10|1", **mark, "preprocess_version": 1},
           {"key": "/p/b.jpg|10|1", **mark, "preprocess_version": 2})
    with ResultStore(out, ModelIdentity("1" * 64, model_sha256="m" * 64, preprocess_version=2)) as store:
        assert not store.is_done("/p/a.jpg|10|1")
        assert store.is_done("/p/b.jpg|10|1")


def _photo(path: Path, data: bytes) -> tuple[str, str]:
    """Write ``data`` at ``path``; (its key as the pipeline makes it, its sha256)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    st = os.stat(path)
    return f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}", hashlib.sha256(data).hexdigest()


def test_a_moved_photograph_carries_over_only_a_final_row(tmp_path: Path) -> None:
    """M37: a file is "the same photograph moved" when a FINAL row of the same bytes names a path that no longer
    exists. A row on which the model failed is no result to carry over: the photograph must be screened, not
    listed with the failure under its new name."""
    data = b"fundus" * 100
    key, sha = _photo(tmp_path / "new" / "x.jpg", data)
    size = len(data)
    gone = str(tmp_path / "card" / "x.jpg")
    out = tmp_path / "out"
    _jsonl(out, {"key": f"{gone}|{size}|1", "status": "ok", "sha256": sha})
    with ResultStore(out) as store:
        found = store.find_moved(key, tmp_path / "new" / "x.jpg")
        assert found is not None and found["key"] == f"{gone}|{size}|1"

    _jsonl(out, {"key": f"{gone}|{size}|1", "status": "error", "reasons": ["inference_error"], "sha256": sha})
    with ResultStore(out) as store:
        assert store.find_moved(key, tmp_path / "new" / "x.jpg") is None


def test_a_photograph_moved_twice_is_traced_to_its_latest_place(tmp_path: Path) -> None:
    """M32: after a row says ``moved_from`` p1, p1's row stands for nothing; a third place of the same bytes is
    the photograph moved from p2, so that the report drops p2's row and lists it once."""
    data = b"retina" * 100
    key, sha = _photo(tmp_path / "p3" / "x.jpg", data)
    size = len(data)
    p1, p2 = str(tmp_path / "p1" / "x.jpg"), str(tmp_path / "p2" / "x.jpg")
    out = tmp_path / "out"
    _jsonl(out, {"key": f"{p1}|{size}|1", "status": "ok", "sha256": sha},
           {"key": f"{p2}|{size}|1", "status": "ok", "sha256": sha, "moved_from": p1})
    with ResultStore(out) as store:
        found = store.find_moved(key, tmp_path / "p3" / "x.jpg")
        assert found is not None and found["key"] == f"{p2}|{size}|1"


# -- results.csv ----------------------------------------------------------------------------------------------
def test_the_csv_cells_a_spreadsheet_reads(tmp_path: Path) -> None:
    """M50, M51, M53, M54, M58, M59: undecided flags are empty (not "no"); a name starting with ``-`` is not
    run as a formula; an ungradable photograph has no findings; the advice is the MAIN cause's (exposure
    before blur, the report's order); the file starts with a UTF-8 BOM and its lines end in CRLF."""
    rows = [
        {"id": "a", "source": "-2+3.jpg", "status": "ok", "refer": True, "gradable": True,
         "positive": ["npdr", "normal"]},
        {"id": "b", "source": "/p/b.jpg", "status": "ungradable", "refer": None, "gradable": False,
         "positive": ["npdr"], "reasons": ["blurred", "too_dark"]},
    ]
    path = tmp_path / "r.csv"
    assert write_csv(path, rows, NAMES, referable=["npdr", "dme"]) == 2
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    assert raw.count(b"\r\n") == 3 and raw.count(b"\n") == 3  # header and two rows, every line CRLF
    a, b = _csv_rows(path)
    assert a["source"] == "'-2+3.jpg"
    assert (a["refer"], a["gradable"], a["findings"], a["advice"]) == ("yes", "yes", "npdr", "")
    assert (b["refer"], b["gradable"], b["findings"]) == ("", "no", "")
    assert b["advice"] == REASON_TEXT["too_dark"].advice


# -- report.html ------------------------------------------------------------------------------------------------
def test_unknown_reason_tags_come_last() -> None:
    """M61: the main cause is a known tag in the documented order; a tag this version does not know (a newer
    error type) is listed after them, not made the main cause."""
    assert order_reasons(["new_error", "blurred", "too_dark", "blurred"]) == ["too_dark", "blurred", "new_error"]


def test_failed_rows_are_never_duplicates_of_each_other(tmp_path: Path) -> None:
    """M81: only screened rows are compared. Two same-size files that could not be screened (the same damaged
    download saved twice) are not "one photograph under two names, perhaps of two patients"; the same two
    files screened are."""
    keys = [_photo(tmp_path / f"{n}.jpg", b"not a photograph" * 4)[0] for n in "ab"]
    failed = [{"key": k, "source": k.split("|")[0], "status": "error", "reasons": ["undecodable"]} for k in keys]
    assert find_duplicates(failed).groups == []
    assert find_duplicates([{**r, "status": "ok"} for r in failed]).groups == [[0, 1]]


def _row(i: int, status: str = "ok", **kw: object) -> dict:
    return {"id": f"r{i}", "source": f"/x/r{i}.jpg", "key": f"/x/r{i}.jpg|{10 + i}|1", "status": status, **kw}


def test_a_program_failure_is_not_called_an_unreadable_file() -> None:
    """M79: an internal error, like a model failure, is "Not screened - program failure" (run again), not
    "Unreadable file" (copy the photograph again), which sends the nurse to the camera for nothing."""
    page = render_report([_row(0, "error", reasons=["internal_error"])], "/nonexistent", _manifest())
    assert "Not screened - program failure" in page and "Unreadable file</div>" not in page


def test_scores_of_an_ungradable_photograph_are_marked_unused() -> None:
    """M90: an ungradable photograph's scores are shown, marked as not used for any decision."""
    probs = {"normal": 0.1, "npdr": 0.9, "dme": 0.05}
    page = render_report([_row(0, "ungradable", probs=probs, reasons=["blurred"])], "/nonexistent", _manifest())
    assert "not used: no decision on an ungradable photograph" in page
    ok = render_report([_row(0, "ok", probs=probs, refer=True, positive=["npdr"])], "/nonexistent", _manifest())
    assert "not used" not in ok


def test_rows_of_the_same_model_under_a_revalidated_bundle_are_not_another_model() -> None:
    """M95: the report warns of rows of another MODEL (model_sha256); a bundle validated again has a new bundle
    hash and the same model, and its rows must not be called "screened with another model"."""
    m = _manifest(content_sha256="9" * 64)
    same = _row(0, "ok", model_sha256=model_sha256(m), bundle_sha256="8" * 64)
    assert "id='other-bundle'" not in render_report([same], "/nonexistent", m)
    other = _row(1, "ok", model_sha256="0" * 64, bundle_sha256="8" * 64)
    assert "id='other-bundle'" in render_report([same, other], "/nonexistent", m)
