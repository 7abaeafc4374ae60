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
from uopsl.runtime.pipeline import InferenceHealth, PipelineConfig, PrepareSpec, ScreeningPipeline, prepare_item
from uopsl.runtime.input_keys import file_key
from uopsl.runtime.inputs import (
    WalkState, check_inputs, check_output_placement, item_for_path, iter_inputs, list_folder, walk_images,
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

    import uopsl.runtime.inputs as inputs

    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "day2.txt").write_text("b.jpg\n", encoding="utf-8")
    top = tmp_path / "all.txt"
    top.write_text("a.jpg\nday2.txt\nb.jpg\n", encoding="utf-8")

    def refusing(file: object, *args: object, **kwargs: object) -> object:
        if Path(os.fspath(file)).name == "day2.txt":  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", os.fspath(file))  # type: ignore[arg-type]
        return builtins.open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(inputs, "open", refusing, raising=False)  # the module's open(), as _read_list calls it
    assert [Path(i.source).name for i in iter_inputs([top])] == ["a.jpg", "day2.txt", "b.jpg"]


def test_a_thumbnail_fits_its_longest_side(tmp_path: Path) -> None:
    """``thumbnail_side`` is the thumbnail's LONGEST side (px): the report embeds one per photograph (about 9 KB
    each), so a landscape photograph's thumbnail must not come out wider than asked. By hand, 440 x 320 (w x h)
    at 100: scale 100 / 440, so 100 x round(72.73) = 100 x 73."""
    import cv2

    square = cv2.imread(str(fundus_jpeg(tmp_path / "sq.jpg", size=320)))
    wide = cv2.copyMakeBorder(square, 0, 0, 80, 40, cv2.BORDER_CONSTANT)  # 320 high, 440 wide
    cv2.imwrite(str(tmp_path / "wide.png"), wide)
    spec = PrepareSpec(_manifest().preprocess, thumbnail_side=100)
    prep = prepare_item(item_for_path(tmp_path / "wide.png"), spec)
    assert prep.error == "" and prep.thumbnail is not None
    assert prep.thumbnail.shape == (73, 100, 3)


def test_max_inference_failures_zero_means_never_stop(tmp_path: Path) -> None:
    """``max_inference_failures=0`` is documented as "never raises": a caller that wants every input to get its
    row, whatever the backend does, must be able to set it, and then a backend failing every call gives one
    error row per photograph and no stop."""
    photos = [fundus_jpeg(tmp_path / f"g{i}.jpg", seed=i) for i in range(4)]
    rows = _run([BackendError("device lost")], photos, batch_size=1, max_inference_failures=0)
    assert [r.status for r in rows] == ["error"] * 4
    assert all(r.error == "inference failed: device lost" for r in rows)


def test_a_batch_size_below_one_is_refused() -> None:
    """``batch_size=0`` would make the read-ahead window 0 inputs: the run would take no input and end with no
    row at all, as if the folder were empty. It is refused when the settings are made."""
    with pytest.raises(ConfigError, match="batch size must be >= 1, got 0"):
        PipelineConfig(batch_size=0)
    assert PipelineConfig(batch_size=1).batch_size == 1


def test_a_photograph_that_hits_an_internal_error_keeps_its_content_hash(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure no photograph should cause (a bug in a decoder) gives an ``internal_error`` row; the file was
    already read, and its sha256 stays on the row: the duplicate check and the moved-card lookup of a later run
    recognise the photograph by it. By hand: the sha256 of the file's bytes."""
    import hashlib

    import uopsl.runtime.pipeline as pipeline

    photo = fundus_jpeg(tmp_path / "g.jpg", seed=1)

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("a bug, not the photograph")

    monkeypatch.setattr(pipeline, "preprocess", broken)
    prep = prepare_item(item_for_path(photo), PrepareSpec(_manifest().preprocess))
    assert prep.reasons == ("internal_error",) and prep.error == "RuntimeError: a bug, not the photograph"
    assert prep.sha256 == hashlib.sha256(photo.read_bytes()).hexdigest()


# -- worker processes -----------------------------------------------------------------------------------------
def test_a_broken_shared_pool_is_not_handed_to_the_next_run() -> None:
    """The shared pool of preprocessing processes outlives a run. One that broke (a worker killed for memory)
    refuses every task; the next run asking for the shared pool must get a fresh one, or every photograph of
    it would go through the pool-restart path (and a run could stop on "worker processes stopped"). No worker
    process is started: a pool starts its processes at its first task."""
    from uopsl.runtime import workerpool

    n = 13  # a pool size no other test shares
    first = workerpool.worker_processes(n)
    try:
        assert workerpool.worker_processes(n) is first  # kept while it works
        first._broken = "A child process terminated abruptly"  # type: ignore[attr-defined] # what a dead worker sets
        second = workerpool.worker_processes(n)
        assert second is not first and not second._broken  # type: ignore[attr-defined]
        assert workerpool.worker_processes(n) is second
    finally:
        workerpool.forget_worker_processes(workerpool.worker_processes(n))
    assert n not in workerpool._shared


def test_breaks_no_photograph_explains_are_counted_since_the_last_one_that_did(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker-pool break is blamed on the input first in line; when that input then runs alone without harm,
    the break is "unexplained". More than ``MAX_POOL_RESTARTS`` unexplained breaks SINCE the last photograph found
    to crash its worker stop the run (the pool itself is failing); a crashing photograph found clears the count,
    since the breaks before it were its doing. Counting them over the whole run instead stops a clinic's run that
    only met a few damaged files.

    A pool that needs no process (tasks run at once, in this process) breaks as scripted, with
    ``MAX_POOL_RESTARTS = 2`` and tasks of 2 inputs: I1's task holds the crashing C1 (I1 unexplained, then C1
    found: count 0), then I2, I3 and I4 each break their task once (count 1, 2, 3; each is checked on arrival
    against "more than 2" before it is counted, so none stops). By hand: every input gets its row, C1 a
    ``decoder_crash`` one. Inputs are missing files (error rows, no model needed); 8 others lie between two
    breaks, more than the read-ahead window, so no break is absorbed by a resubmission.
    """
    from concurrent.futures import BrokenExecutor, Future

    import uopsl.runtime.pipeline as pipeline
    from uopsl.runtime.pipeline import _Prepared, prepare_items
    from uopsl.runtime.inputs import InputItem

    def item(name: str) -> InputItem:
        return item_for_path(tmp_path / f"{name}.jpg")

    others = iter(range(100))

    def goods(n: int) -> list[InputItem]:
        return [item(f"g{next(others)}") for _ in range(n)]

    items = [item("I1"), item("C1"), *goods(8), item("I2"), *goods(9), item("I3"), *goods(9), item("I4"), *goods(3)]
    crashes = {str(tmp_path / "C1.jpg")}
    break_once = {str(tmp_path / f"I{k}.jpg") for k in (2, 3, 4)}

    class ScriptedPool:
        _broken = False
        _executor_manager_thread = None

        def submit(self, fn: object, *args: object) -> Future:
            f: Future = Future()
            if fn is prepare_items:
                names = {i.source for i in args[0]}  # type: ignore[attr-defined]
                if names & (crashes | break_once):
                    break_once.difference_update(names)
                    f.set_exception(BrokenExecutor("A child process terminated abruptly"))
                    return f
            f.set_result(fn(*args))  # type: ignore[operator]
            return f

    pool = ScriptedPool()
    monkeypatch.setattr(pipeline, "MAX_POOL_RESTARTS", 2)
    monkeypatch.setattr(pipeline, "worker_processes", lambda n: pool)
    with _Scripted([[0.1, 0.1, 0.1]]) as backend:
        pipe = ScreeningPipeline(backend, _manifest(),
                                 PipelineConfig(batch_size=1, prefetch_batches=1, workers=2, worker_pool="processes"))
        assert pipe._window(True) == (8, 2)
        alone: list[str] = []

        def prepare_alone(it: InputItem) -> _Prepared:
            alone.append(Path(it.source).stem)
            if it.source in crashes:
                return _Prepared(it, error="stopped the worker", reasons=("decoder_crash",))
            return prepare_items([it], pipe._spec)[0]

        monkeypatch.setattr(pipe, "_fresh_processes", lambda failed, exc, it: pool)
        monkeypatch.setattr(pipe, "_prepare_alone", prepare_alone)
        rows = list(pipe.run(items))
    assert alone == ["I1", "C1", "I2", "I3", "I4"]
    assert [r.source for r in rows] == [i.source for i in items]
    assert [Path(r.source).stem for r in rows if r.reasons == ("decoder_crash",)] == ["C1"]


def test_a_pool_given_up_on_has_its_workers_stopped() -> None:
    """:func:`forget_worker_processes` is what a run calls on a pool that cannot run a trivial task (a worker
    hung in a decoder, say): the pool is not marked broken, so only an explicit terminate stops its workers; left
    running, a hung worker holds its memory and a core for as long as the program lives (``watch`` runs for
    weeks). Checked on a stand-in pool: its process must be terminated, the pool shut down without waiting, and
    no longer shared."""
    from types import SimpleNamespace

    from uopsl.runtime import workerpool

    proc = SimpleNamespace(terminated=False)
    proc.terminate = lambda: setattr(proc, "terminated", True)
    pool = SimpleNamespace(_processes={1: proc}, _broken=False, _call_queue=None, shut=None)
    pool.shutdown = lambda wait, cancel_futures: setattr(pool, "shut", (wait, cancel_futures))
    with workerpool._lock:
        workerpool._shared[97] = pool  # type: ignore[assignment]
    workerpool.forget_worker_processes(pool)  # type: ignore[arg-type]
    assert proc.terminated and pool.shut == (False, True) and 97 not in workerpool._shared


# -- the per-day report -------------------------------------------------------------------------------------------
def _day_row(i: int, when: str | None) -> dict[str, object]:
    row: dict[str, object] = {"id": f"p{i:03d}", "source": f"/drop/p{i:03d}.jpg", "key": f"/drop/p{i:03d}.jpg|1|{i}",
                              "sha256": f"{i:064x}", "status": "ok", "refer": False, "positive": [],
                              "probs": {"normal": 0.9, "dr": 0.1}, "reasons": [], "error": "", "heatmap_class": "dr"}
    if when is not None:
        row["screened_at"] = when
    return row


@pytest.mark.parametrize(("tz", "when", "day"), [("IST-5:30", "2026-11-26T20:00:00+00:00", (2026, 11, 27)),
                                                ("EST+5", "2026-11-27T03:00:00+00:00", (2026, 11, 26))])
def test_a_photograph_is_filed_under_the_local_day_it_was_screened(monkeypatch: pytest.MonkeyPatch, tz: str,
                                                                   when: str, day: tuple[int, int, int]) -> None:
    """Day pages are the clinic's LOCAL calendar days: a clinic prints "today's page". Rows carry UTC times, so a
    photograph screened at 01:30 in India (20:00 UTC the day before) belongs on the later day's page, and one
    screened at 22:00 in New York (03:00 UTC the next day) on the earlier one. By hand from the offsets (POSIX
    TZ strings, no time-zone database needed): +5:30 and -5:00."""
    import time
    from datetime import date

    from uopsl.runtime.report_days import screening_day

    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        assert screening_day(_day_row(0, when)) == date(*day)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_photographs_without_a_screening_time_come_on_the_last_page(tmp_path: Path) -> None:
    """Pages run oldest day first and the rows without a screening time (``undated``) come last: the
    day pages link to their neighbours in this order, so an undated page first would sit before the oldest
    day in the previous/next chain. Local days of noon UTC, worked out with ``astimezone`` by hand."""
    from datetime import datetime, timezone

    from uopsl.runtime.report_days import plan_pages

    noon = [datetime(2026, 11, d, 12, 0, tzinfo=timezone.utc) for d in (26, 27)]
    rows = [_day_row(0, None), _day_row(1, noon[1].isoformat()), _day_row(2, noon[0].isoformat())]
    pages = plan_pages(rows, ["dr"], max_rows=10)
    days = [d.astimezone().date().isoformat() for d in noon]
    assert [(p.name, p.rows) for p in pages] == [(f"{days[0]}.html", (2,)), (f"{days[1]}.html", (1,)),
                                                  ("undated.html", (0,))]


def _report_manifest() -> Manifest:
    from uopsl.runtime.bundle import ClassSpec

    classes = (ClassSpec("normal", ("healthy retina",), threshold=0.5, referable=False),
               ClassSpec("dr", ("microaneurysms",), threshold=0.6, referable=True))
    return Manifest(classes=classes, head="sigmoid", preprocess=PreprocessConfig(), files=(), model_name="uopsl",
                    content_sha256="cd" * 32)


def _nav(page: Path) -> list[str]:
    """The links of a day page's navigation line, in order."""
    import re

    text = page.read_text(encoding="utf-8")
    return re.findall(r"<a href='([^']+)'>", text.split("<p class='nav noprint'>")[1].split("</p>")[0])


def test_day_pages_link_to_both_neighbours_and_a_new_day_updates_the_last_one(tmp_path: Path) -> None:
    """A clinic pages through the days with previous/next. Every page but the first links to the day before and
    every page but the last to the day after; when a new day begins, the page that was last must be made again
    with its new "next" link, though its own photographs did not change (the page-rewrite fingerprint covers
    its links). By hand: three days of noon UTC, one page each (2 photographs a page at most)."""
    from datetime import datetime, timezone

    from uopsl.runtime.report_days import DAYS_DIR, write_reports

    when = [datetime(2026, 11, d, 12, 0, tzinfo=timezone.utc) for d in (26, 27, 28)]
    name = [f"{w.astimezone().date().isoformat()}.html" for w in when]
    rows = [_day_row(0, when[0].isoformat()), _day_row(1, when[0].isoformat()), _day_row(2, when[1].isoformat())]
    days = tmp_path / DAYS_DIR
    write_reports(rows, tmp_path, _report_manifest(), max_rows=2)
    assert _nav(days / name[0]) == ["../report.html", name[1]] and _nav(days / name[1]) == ["../report.html", name[0]]
    write_reports(rows + [_day_row(3, when[2].isoformat())], tmp_path, _report_manifest(), max_rows=2)
    assert _nav(days / name[0]) == ["../report.html", name[1]]
    assert _nav(days / name[1]) == ["../report.html", name[0], name[2]]
    assert _nav(days / name[2]) == ["../report.html", name[1]]


def test_a_file_of_the_users_beside_the_day_pages_is_kept(tmp_path: Path) -> None:
    """Only the day pages this module writes (``YYYY-MM-DD[-N].html``, ``undated[-N].html``) are removed when a
    day no longer has photographs; a file the user keeps in ``days/`` whose name merely starts like one (a saved
    copy ``2026-11-01.html.orig``, an annotated ``2026-11-01.html-notes.txt``) is theirs and stays."""
    from datetime import datetime, timezone

    from uopsl.runtime.report_days import DAYS_DIR, write_reports

    days = tmp_path / DAYS_DIR
    days.mkdir()
    mine = ["2026-11-01.html.orig", "2026-11-01.html-notes.txt"]
    for n in mine:
        (days / n).write_text("mine", encoding="utf-8")
    (days / "2026-11-01.html").write_text("an old day page", encoding="utf-8")
    noon = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc).isoformat()
    write_reports([_day_row(i, noon) for i in range(3)], tmp_path, _report_manifest(), max_rows=2)
    assert not (days / "2026-11-01.html").exists()
    assert [(days / n).read_text(encoding="utf-8") for n in mine] == ["mine", "mine"]


def test_the_index_counts_only_dated_days_and_lists_undated_referrals_last(tmp_path: Path) -> None:
    """Rows without a screening time (results of an old toolkit) are no screening day: the index title counts
    the real days only ("on 1 day"), and in the newest-first referral list such a referral comes after every
    dated one, so that it cannot push the latest referrals off a capped list. By hand: one referral at noon
    UTC on 26 November, one undated."""
    import re
    from datetime import datetime, timezone

    from uopsl.runtime.report_days import write_reports

    noon = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc).isoformat()
    rows = [_day_row(0, noon), _day_row(1, None), _day_row(2, noon)]
    for r in rows[:2]:
        r.update(refer=True, positive=["dr"], probs={"normal": 0.1, "dr": 0.9})
    write_reports(rows, tmp_path, _report_manifest(), max_rows=2)
    index = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert re.search(r"<title>[^<]*Screening report - 3 images on 1 day - ", index), index[:400]
    referred = re.findall(r"#r-(p\d+)'>", index.split("Referred photographs")[1])
    assert referred == ["p000", "p001"]
