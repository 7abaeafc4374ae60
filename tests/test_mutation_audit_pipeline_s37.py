"""Mutation audit (session 37) of the screening pipeline's internals, its worker pools and the per-day report.

Each test pins a behaviour a single-point bug in ``runtime/pipeline.py``, ``runtime/workerpool.py`` or
``runtime/report_days.py`` once slipped past the rest of the suite (the audit's report names the bug each one
catches). Expected values are derived by hand, or by a plain re-implementation written out in the test, never
by calling the code under test a second way. No model is loaded: a scripted backend answers with fixed
probabilities, so each expected row follows from the manifest's thresholds (0.5 for every class; ``npdr`` and
``dme`` referable, ``normal`` not).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from tinybundle import CLASSES, HUGE_LIMIT, TinyStubBackend, fundus_jpeg
from uopsl.runtime.bundle import Manifest
from uopsl.runtime.errors import BackendError, ConfigError
from uopsl.runtime.pipeline import (
    InferenceHealth,
    PipelineConfig,
    ScreeningPipeline,
    WalkState,
    check_inputs,
    check_output_placement,
    file_key,
    item_for_path,
    iter_inputs,
    list_folder,
    walk_images,
)
from uopsl.runtime.preprocess import PreprocessConfig


def _manifest() -> Manifest:
    """The tiny bundle's manifest without its model file: 64 px input, thresholds 0.5, npdr and dme referable."""
    return Manifest(classes=CLASSES, head="sigmoid", preprocess=PreprocessConfig(size=64, max_pixels=HUGE_LIMIT),
                    files=(), site_map_size=(8, 8), model_name="tiny")


class _Scripted(TinyStubBackend):
    """Answers call ``n`` with ``answers[n % len(answers)]``: an exception to raise, or the (N, 3) probabilities
    of that batch (one row of 3 is repeated for every photograph of the batch)."""

    name = "scripted"

    def __init__(self, answers: Sequence[object]) -> None:
        super().__init__()
        self.answers = list(answers)
        self.calls = 0

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        answer = self.answers[self.calls % len(self.answers)]
        self.calls += 1
        if isinstance(answer, BaseException):
            raise answer
        probs = np.asarray(answer, np.float32)
        if probs.ndim == 1:
            probs = np.tile(probs, (len(batch), 1))
        assert probs.shape == (len(batch), 3), (probs.shape, len(batch))
        return {"probs": probs, "site_maps": np.zeros((len(batch), 3, 8, 8), np.float32)}


def _run(answers: Sequence[object], inputs: list[object], **cfg: object) -> list:
    with _Scripted(answers) as backend:
        pipe = ScreeningPipeline(backend, _manifest(), PipelineConfig(workers=1, **cfg))  # type: ignore[arg-type]
        return list(pipe.run(inputs))


# -- what the grader is shown ---------------------------------------------------------------------------------
def test_the_heatmap_shown_is_the_most_probable_referable_finding(tmp_path: Path) -> None:
    """``heatmap_class``: the map of the most probable positive referable class, else of the most probable
    positive class, else of the most probable class. The grader looks at that one map to see why a photograph
    was referred; the map of ``normal`` (or of the least likely class) beside a referral points them nowhere.

    By hand, thresholds 0.5: (0.3, 0.2, 0.1) nothing positive -> top class ``normal``; (0.9, 0.6, 0.8) all
    positive, referable npdr 0.6 and dme 0.8 -> ``dme``; (0.9, 0.2, 0.55) normal and dme positive -> ``dme``;
    (0.9, 0.2, 0.1) only normal positive -> ``normal``.
    """
    photos = [fundus_jpeg(tmp_path / f"g{i}.jpg", seed=i) for i in range(4)]
    probs = [[0.3, 0.2, 0.1], [0.9, 0.6, 0.8], [0.9, 0.2, 0.55], [0.9, 0.2, 0.1]]
    rows = _run([probs], photos, batch_size=4)
    assert [r.status for r in rows] == ["ok"] * 4
    assert [r.positive for r in rows] == [(), ("normal", "npdr", "dme"), ("normal", "dme"), ("normal",)]
    assert [r.refer for r in rows] == [False, True, True, False]
    assert [r.heatmap_class for r in rows] == ["normal", "dme", "dme", "normal"]


# -- when a run gives up on its backend -----------------------------------------------------------------------
def test_one_photograph_without_finite_probabilities_is_no_failed_batch(tmp_path: Path) -> None:
    """Only a batch with no finite probability at all counts towards ``max_inference_failures``; one NaN row (an
    FP16 overflow on one photograph) is that photograph's error row. Counted as a failed batch, a clinic with
    ``max_inference_failures=1`` would see the whole run stop on one odd photograph.
    """
    photos = [fundus_jpeg(tmp_path / f"g{i}.jpg", seed=i) for i in range(2)]
    rows = _run([[[np.nan, 0.2, 0.2], [0.1, 0.7, 0.2]]], photos, batch_size=2, max_inference_failures=1)
    assert [r.status for r in rows] == ["error", "ok"]
    assert rows[0].reasons == ("inference_error",) and rows[1].refer is True


def test_failures_that_are_not_in_a_row_never_stop_the_run(tmp_path: Path) -> None:
    """``max_inference_failures`` counts failures IN A ROW: an answered batch in between starts the count again.
    A backend failing every other batch (a transient out-of-memory under load) costs those batches' rows
    (retried by the next run) but must not stop a clinic's run as "a backend in a failed state".

    Batches of one; calls fail, answer, fail, answer, fail, answer: by hand the rows are error, ok, x3.
    """
    photos = [fundus_jpeg(tmp_path / f"g{i}.jpg", seed=i) for i in range(6)]
    rows = _run([BackendError("out of memory"), [0.1, 0.2, 0.2]], photos, batch_size=1, max_inference_failures=2)
    assert [r.status for r in rows] == ["error", "ok"] * 3


def test_the_failure_count_starts_again_after_it_stopped_a_run() -> None:
    """After :class:`InferenceHealth` raised, its count starts again from zero: a Screener keeps one per open
    backend, and the next run must get ``limit`` tries and a message that counts failures in a row, not one
    try and "failed 3 times in a row" after a single new failure."""
    h = InferenceHealth(limit=2)
    h.failed(BackendError("a"), "ort-cuda")
    with pytest.raises(BackendError, match=r"failed 2 times in a row \(last: b\)"):
        h.failed(BackendError("b"), "ort-cuda")
    h.failed(BackendError("c"), "ort-cuda")  # the first of a new run: no stop
    with pytest.raises(BackendError, match=r"failed 2 times in a row \(last: d\)"):
        h.failed(BackendError("d"), "ort-cuda")


# -- bounded memory ---------------------------------------------------------------------------------------------
def test_rows_of_unreadable_files_are_given_out_while_the_run_goes_on(tmp_path: Path) -> None:
    """Inputs that never reach the model (unreadable, missing) are flushed every ``4 * batch_size`` rows, not
    held until a photograph fills a batch. A card of thousands of damaged files would otherwise be held in
    memory to the end, and a run stopped half way would have saved none of their rows.

    By hand (batch 1, prefetch 1: a window of 2 inputs, one per task): the first flush comes when 4 rows wait,
    with 2 more inputs taken ahead, so 6 inputs have been pulled from the source at the first result.
    """
    pulled = [0]
    at_first: list[int] = []

    def source() -> Iterator[object]:
        for i in range(40):
            pulled[0] += 1
            yield item_for_path(tmp_path / f"gone{i}.jpg")

    with _Scripted([[0.1, 0.1, 0.1]]) as backend:
        pipe = ScreeningPipeline(backend, _manifest(), PipelineConfig(batch_size=1, prefetch_batches=1, workers=1))
        rows = []
        for r in pipe.run(source()):
            if not rows:
                at_first.append(pulled[0])
            rows.append(r)
    assert len(rows) == 40 and {r.status for r in rows} == {"error"}
    assert at_first == [6]


# -- file versions ----------------------------------------------------------------------------------------------
def test_a_file_replaced_within_the_same_second_gets_a_new_key(tmp_path: Path) -> None:
    """A key is ``resolved path|size|mtime_ns`` with the time to the nanosecond. Uncompressed photographs (BMP,
    PPM) of one camera all have one size, so a retake saved over the first within the same second differs
    from it only below the second: with the time in whole seconds a rerun would find its key "already
    screened" and keep the earlier photograph's result for it."""
    photo = tmp_path / "IMG_0001.bmp"
    t0 = 1_700_000_000_250_000_000
    photo.write_bytes(b"A" * 100)
    os.utime(photo, ns=(t0, t0))
    if os.stat(photo).st_mtime_ns != t0:
        pytest.skip("this file system does not keep sub-second file times")
    first = file_key(photo)
    assert first == f"{os.path.realpath(photo)}|100|{t0}"
    photo.write_bytes(b"B" * 100)  # the retake: same size, 0.5 s later
    os.utime(photo, ns=(t0 + 500_000_000, t0 + 500_000_000))
    assert file_key(photo) == f"{os.path.realpath(photo)}|100|{t0 + 500_000_000}" != first


# -- where results live ---------------------------------------------------------------------------------------
def test_a_folder_whose_name_starts_like_the_output_folder_is_still_walked(tmp_path: Path) -> None:
    """The output folder ``photos/out`` is left out of a walk, and what lies inside it; ``photos/out-march``
    and ``photos/outside`` only share the first letters of its name. Leaving them out would skip a clinic's
    photographs without a row, as if they were thumbnails."""
    root = tmp_path / "photos"
    for name in ("a.jpg", "out/thumbs/t.jpg", "out-march/b.jpg", "outside/c.jpg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    state = WalkState(exclude=[root / "out"])
    got = [p.relative_to(root).as_posix() for p in walk_images(root, state)]
    assert got == ["a.jpg", "out-march/b.jpg", "outside/c.jpg"]
    assert state.excluded == [str(root / "out")]


def test_an_output_folder_beside_the_photographs_with_a_longer_name_is_allowed(tmp_path: Path) -> None:
    """``--out /x/photos`` with the input ``/x/photos-2`` (or ``/x/photos2``) is an output folder beside the
    input, not around it: refusing it stops a clinic's run with a false "would be skipped" message. The
    output folder the input itself, or a parent of it, is still refused."""
    photos = tmp_path / "photos"
    for name in ("photos-2", "photos2", "photos/day1"):
        (tmp_path / name).mkdir(parents=True)
    check_output_placement(photos, [tmp_path / "photos-2", tmp_path / "photos2"])
    with pytest.raises(ConfigError, match="holds the input"):
        check_output_placement(photos, [photos / "day1"])
    with pytest.raises(ConfigError, match="is the input"):
        check_output_placement(photos, [photos])


def test_dicom_copies_left_out_are_reported_even_when_nothing_else_was_skipped(tmp_path: Path) -> None:
    """A PACS export writes each photograph as ``IMG1.jpg`` and ``IMG1.dcm``: the walk screens the JPEG and counts
    the DICOM copy. ``anything_skipped`` decides whether the run says so at all (console and summary); a folder
    whose only leftovers are such copies must still be told "1 DICOM file skipped", or the clinic cannot tell
    the .dcm files were seen. (The copy is recognised by its name before it is read: any bytes do.)"""
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "IMG1.jpg").write_bytes(b"x")
    (folder / "IMG1.dcm").write_bytes(b"x")
    state = WalkState()
    assert [p.name for p in walk_images(folder, state)] == ["IMG1.jpg"]
    assert (state.dicom_copies, dict(state.skipped), state.hidden_images, state.dicom_unread) == (1, {}, 0, 0)
    assert state.anything_skipped
    assert state.skipped_message().startswith("1 DICOM file skipped (a photograph of the same name is beside each")


def test_a_folder_that_could_not_be_listed_is_listed_again_once_it_can_be(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``watch`` keeps one WalkState across polls and lists a folder again with :func:`list_folder`. A folder
    that could not be listed (a network share not yet mounted, permissions being fixed) must not stay marked
    "already walked": once it can be listed, its photographs are taken, or that day's patients are never
    screened while watch runs. (No permission is simulated: root can list any folder.)"""
    day = tmp_path / "day2"
    day.mkdir()
    (day / "a.jpg").write_bytes(b"x")
    real_scandir = os.scandir

    def denied(path: object = ".") -> object:
        if os.fspath(path) == os.fspath(day):  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", os.fspath(path))  # type: ignore[arg-type]
        return real_scandir(path)  # type: ignore[arg-type]

    state = WalkState()
    with monkeypatch.context() as m:
        m.setattr(os, "scandir", denied)
        assert list_folder(day, state) == []
    assert state.unlisted == {os.fspath(day)}
    assert list_folder(day, state) == [(day / "a.jpg", False)]
    assert state.unlisted == set()


def test_a_dicom_file_just_long_enough_to_tell_is_taken(tmp_path: Path) -> None:
    """A file named the DICOM media way (``IM000001``) is taken when its first 134 bytes are a Part 10 start
    (128-byte preamble, ``DICM``, file meta group 0x0002); only a file SHORTER than that cannot tell yet. One of
    exactly 134 bytes can: it is taken (its row then says what is wrong with it) instead of being counted as
    "not an image type"."""
    media = tmp_path / "PAT00001"
    media.mkdir()
    (media / "IM000001").write_bytes(bytes(128) + b"DICM" + b"\x02\x00")
    assert len((media / "IM000001").read_bytes()) == 134
    (media / "IM000002").write_bytes(bytes(128) + b"DICM" + b"\x02")  # 133 bytes: too short to tell
    state = WalkState()
    assert [p.name for p in walk_images(media, state)] == ["IM000001"]
    assert dict(state.skipped) == {"(no suffix)": 1}


def test_an_output_folder_named_as_input_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    """:func:`check_inputs` runs before the model is loaded and the output folder is created; naming a results
    folder (it holds ``results.jsonl``) as input must be refused there, with the message that says why, and
    not only later, once a new output folder and its lock already exist."""
    old = tmp_path / "screened-march"
    old.mkdir()
    (old / "results.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError, match="is an output folder of uopsl-screen .*results.jsonl"):
        check_inputs([tmp_path / "a.jpg", old])
    check_inputs([tmp_path / "a.jpg", tmp_path / "gone.jpg"])  # a missing photograph gets its row: no stop


def test_a_list_entry_that_is_an_output_folder_is_left_out_not_a_stop(tmp_path: Path) -> None:
    """Only a TOP-LEVEL output folder stops a run; a list file's entry that is one (last month's results folder
    in a list of day folders) is left out like any output folder inside a walk, and the list's photographs
    are screened."""
    old = tmp_path / "old_results"
    old.mkdir()
    (old / "results.jsonl").write_text("", encoding="utf-8")
    (old / "t.jpg").write_bytes(b"x")
    (tmp_path / "a.jpg").write_bytes(b"x")
    lst = tmp_path / "list.txt"
    lst.write_text("old_results\na.jpg\n", encoding="utf-8")
    state = WalkState()
    assert [Path(i.source).name for i in iter_inputs([lst], state=state)] == ["a.jpg"]
    assert state.excluded == [str(old)]


def test_a_list_file_with_an_upper_case_suffix_is_read_as_a_list(tmp_path: Path) -> None:
    """``DAY1.TXT`` (a FAT stick's 8.3 name, a Windows tool's export) is a list file like ``day1.txt``: its
    entries are screened. Taken as a photograph, it became one "unreadable" row and none of the photographs it
    lists were screened."""
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.jpg").write_bytes(b"x")
    lst = tmp_path / "DAY1.TXT"
    lst.write_text("a.jpg\nb.jpg\n", encoding="utf-8")
    assert [Path(i.source).name for i in iter_inputs([lst])] == ["a.jpg", "b.jpg"]


def test_a_list_named_inside_a_list_that_cannot_be_opened_gets_a_row_not_a_stop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a TOP-LEVEL list file that cannot be opened stops the run (the user named it). A list named inside
    another one (a day's list on a share without permission) becomes that entry's own row, and the other
    entries are screened: one unreadable entry must not end a clinic's run with nothing screened."""
    import builtins

    import uopsl.runtime.pipeline as pipeline

    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "day2.txt").write_text("b.jpg\n", encoding="utf-8")
    top = tmp_path / "all.txt"
    top.write_text("a.jpg\nday2.txt\nb.jpg\n", encoding="utf-8")

    def refusing(file: object, *args: object, **kwargs: object) -> object:
        if Path(os.fspath(file)).name == "day2.txt":  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", os.fspath(file))  # type: ignore[arg-type]
        return builtins.open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(pipeline, "open", refusing, raising=False)  # the module's open(), as _read_list calls it
    assert [Path(i.source).name for i in iter_inputs([top])] == ["a.jpg", "day2.txt", "b.jpg"]
