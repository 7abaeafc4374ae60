"""Mutation audit (session 38) of what device makers and clinics call directly: the ``Screener`` API
(``runtime/api.py``), the drop-folder watcher (``runtime/watch.py``) and ``uopsl-screen bench``
(``runtime/bench.py``).

Each test pins a behaviour a single-point bug slipped past the rest of the suite with (the audit's report
names the mutant each one catches). Expected figures are worked out by hand in the test from scripted
durations: the benchmark's clock is replaced by a fake one that only the scripted work advances, so no test
sleeps or asserts on real timings. The watcher's tracker runs on a fake clock too; where a real watch runs,
it stops on ``max_images``, not on a timeout.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import tinybundle
from tinybundle import CLASSES, HUGE_LIMIT, TinyStubBackend, good_photos, results_jsonl
from uopsl.runtime import bench
from uopsl.runtime import watch as watch_mod
from uopsl.runtime.api import Screener
from uopsl.runtime.bundle import Manifest
from uopsl.runtime.errors import ConfigError, UopslError
from uopsl.runtime.preprocess import PreprocessConfig
from uopsl.runtime.watch import RETRY_FIRST_S, StableFiles, WatchConfig, watch_folder

tiny_bundle = tinybundle.tiny_bundle  # the session's shared bundle fixture


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))


class _Clock:
    """A perf_counter that moves only when the scripted work says it took time."""

    def __init__(self) -> None:
        self.t = 1000.0

    def perf_counter(self) -> float:
        return self.t


def _fake_time(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    return clock


# -- bench: the figures a datasheet quotes ---------------------------------------------------------------------
def test_throughput_and_mean_come_from_the_mean_call_not_the_median() -> None:
    """Mutant: ``mean = median``. 49 calls of 10 ms and one of 100 ms: 590 ms for 50 calls, a mean of 11.8 ms and
    1000 / 11.8 = 84.75 images per second at batch 1. The median (10 ms) gives 100 img/s: a slow tail (a GC
    pause, a throttled core) then vanishes from the throughput a device maker quotes."""
    stats = bench.latency_stats([0.010] * 49 + [0.100])
    assert stats["mean_ms"] == 11.8
    assert stats["throughput_ips"] == 84.75


def test_sub_millisecond_latencies_keep_their_microseconds() -> None:
    """Mutant: percentiles rounded to 0.1 ms. A GPU call of 0.25-0.625 ms read 0.4 / 0.6 ms. Four calls: the
    nearest-rank p50 is the 2nd fastest (ceil(0.5 * 4) = 2), p90 and p99 the 4th."""
    stats = bench.latency_stats([0.000250, 0.000375, 0.000500, 0.000625])
    assert (stats["p50_ms"], stats["p90_ms"], stats["p99_ms"]) == (0.375, 0.625, 0.625)


class _ScriptedInfer:
    """A backend for ``time_backend``: each ``infer`` call takes the next scripted seconds (then 10 ms each) on
    the fake clock, and reports device parts of 1 ms (h2d) and 4 ms (compute) like the TensorRT backend."""

    def __init__(self, clock: _Clock, seconds: list[float]) -> None:
        self.clock, self.seconds, self.calls = clock, list(seconds), 0
        self.last_timings: dict[str, float] = {}

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.clock.t += self.seconds[self.calls] if self.calls < len(self.seconds) else 0.010
        self.calls += 1
        self.last_timings = {"h2d": 1.0, "compute": 4.0}
        return {}


def test_warm_up_calls_are_made_and_left_out_of_the_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutants: warm-up calls timed with the others, and no warm-up at all (the cold first calls timed). Two
    cold calls of 100 ms, then 10, 11, 12, 13, 14 ms: the five timed calls give p50 = the 3rd fastest = 12 ms,
    max 14 ms, mean 12 ms, so 4 images per call read 4 * 1000 / 12 = 333.33 img/s. The part the device events
    do not cover (host) is the call's 12 ms less 1 + 4 ms = 7 ms at the median (mutant: seconds less ms)."""
    clock = _fake_time(monkeypatch)
    backend = _ScriptedInfer(clock, [0.100, 0.100, 0.010, 0.011, 0.012, 0.013, 0.014])
    images = np.zeros((4, 8, 8, 3), np.uint8)
    (row,) = bench.time_backend(backend, (4,), iters=5, warmup=2, images=images)  # type: ignore[arg-type]
    assert backend.calls == 7  # 2 untimed + 5 timed
    assert row["calls"] == 5 and row["max_ms"] == 14.0 and row["p50_ms"] == 12.0 and row["mean_ms"] == 12.0
    assert row["throughput_ips"] == 333.33
    assert row["h2d_p50_ms"] == 1.0 and row["compute_p99_ms"] == 4.0
    assert row["host_p50_ms"] == 7.0


def test_preprocessing_times_every_image_and_the_gate_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutants: the first ``warmup`` images left out of the timed set (the docstring: every image is timed after
    the warm-up); preprocessing timed up to the end of the gate (the gate counted twice in "both"); "both"
    without the gate. Preprocessing takes 20, 30 and 40 ms for the three images that decode (the fourth fails
    and is left out), the gate 2 ms each: preprocessing p50 = the 2nd of 3 = 30 ms, the gate 2 ms, both 32 ms
    at the median and 30 + 2 = 32 ms on average."""
    import uopsl.runtime.quality as quality

    clock = _fake_time(monkeypatch)
    cost = {b"a": 0.020, b"b": 0.030, b"c": 0.040}

    def preprocess(data: bytes, cfg: object) -> object:
        if data not in cost:
            raise UopslError("not a photograph")
        clock.t += cost[data]
        return object()

    def assess(pre: object) -> None:
        clock.t += 0.002

    monkeypatch.setattr(bench, "preprocess", preprocess)
    monkeypatch.setattr(quality, "assess", assess)
    no_manifest: Any = SimpleNamespace(preprocess=None)
    r = bench.time_preprocess([b"a", b"broken", b"b", b"c"], no_manifest, warmup=2)
    assert r["images"] == 3 and r["calls"] == 3
    assert (r["p50_ms"], r["max_ms"]) == (30.0, 40.0)
    assert r["quality_gate"]["p50_ms"] == 2.0
    both = r["before_inference"]
    assert (both["p50_ms"], both["mean_ms"], both["calls"]) == (32.0, 32.0, 3)


class _FivePerImage(TinyStubBackend):
    """Answers every photograph normal (nothing referred), taking 5 ms of the fake clock per photograph."""

    name = "stub"

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.clock.t += 0.005 * len(batch)
        n = len(batch)
        return {"probs": np.tile(np.float32([0.9, 0.1, 0.1]), (n, 1)),
                "site_maps": np.zeros((n, 3, 8, 8), np.float32)}


def test_the_end_to_end_warm_up_batch_is_not_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant: the clock started before the warm-up batch. Eight photographs at 5 ms each through the model take
    40 ms: 8 / 0.040 = 200 img/s. With the warm-up batch (2 photographs, 10 ms) counted: 160 img/s."""
    clock = _fake_time(monkeypatch)
    manifest = Manifest(classes=CLASSES, head="sigmoid", preprocess=PreprocessConfig(size=64, max_pixels=HUGE_LIMIT),
                        files=(), site_map_size=(8, 8), model_name="tiny")
    sources = [bench.synthetic_jpeg(i, 320) for i in range(8)]
    with _FivePerImage(clock) as backend:
        e = bench.time_end_to_end(backend, manifest, sources, batch=2, workers=1)
    assert (e["images"], e["inferred"], e["statuses"]) == (8, 8, {"ok": 8})
    assert (e["seconds"], e["throughput_ips"], e["inputs_ips"]) == (0.04, 200.0, 200.0)


def test_the_ratio_divides_by_inference_at_the_end_to_end_batch_before_and_after(
        tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutants: the ratio's "before" taken from the first (smallest) batch timed; the timing after the end-to-end
    run made at the smallest batch; before and after swapped (the drift's sign reversed: a machine that slowed
    down read as one that sped up); the end-to-end run at the smallest batch while its ratio divides by the
    largest. Inference is scripted at 300 img/s at batch 1, 100 at batch 2, and 50 when timed again; the
    end-to-end run at 40 img/s. Pooled inference at batch 2 is 2 / (1/100 + 1/50) = 66.67 img/s, the ratio
    40 / 66.67 = 0.6, the drift 50 / 100 - 1 = -0.5."""
    timed: list[tuple[int, ...]] = []

    def time_backend(backend: object, batches: tuple[int, ...], iters: int, warmup: int,
                     images: np.ndarray) -> list[dict[str, Any]]:
        timed.append(tuple(batches))
        rate = {1: 300.0, 2: 100.0} if len(timed) == 1 else {1: 50.0, 2: 50.0}
        return [{"batch": b, "throughput_ips": rate[b]} for b in batches]

    e2e_batches: list[int] = []

    def time_end_to_end(backend: object, manifest: object, sources: list[Any], batch: int,
                        workers: object = None, worker_pool: str = "threads") -> dict[str, Any]:
        e2e_batches.append(batch)
        return {"batch": batch, "images": len(sources), "inferred": len(sources), "throughput_ips": 40.0}

    monkeypatch.setattr(bench, "time_backend", time_backend)
    monkeypatch.setattr(bench, "time_end_to_end", time_end_to_end)
    res = bench.run_bench(tiny_bundle, "ort-cpu", "fp32",
                          bench.BenchConfig(batches=(1, 2), iters=3, warmup=0, e2e_images=4, preprocess_images=2))
    assert timed == [(1, 2), (2,)] and e2e_batches == [2]
    (e,) = res["e2e"]
    assert e["batch"] == 2
    assert (e["inference_ips_before"], e["inference_ips_after"]) == (100.0, 50.0)
    assert (e["inference_ips"], e["inference_drift"], e["ratio"]) == (66.67, -0.5, 0.6)


def _table(cases: list[dict[str, Any]], e2e: list[dict[str, Any]]) -> str:
    return bench.format_table({"machine": {"cpu": "x", "cores": 2}, "model": "m", "backbone": "b",
                               "input_size": 224, "data": "d",
                               "preprocess": {"p50_ms": 1.0, "p90_ms": 1.0, "throughput_ips": 1.0},
                               "cases": cases, "e2e": e2e})


def test_the_table_prints_each_percentile_in_its_column_and_trusts_a_p99_of_100_calls() -> None:
    """Mutants: the p90 column printing p50; the p99 caveat printed at exactly 100 calls (it is for "fewer
    than 100": from 100 calls the nearest-rank p99 is no longer the slowest call)."""
    case = {"backend": "ort-cpu", "precision": "fp32", "batch": 8, "calls": 100, "p50_ms": 1.0, "p90_ms": 2.0,
            "p99_ms": 3.0, "throughput_ips": 800.0}
    table = _table([case], [])
    (row,) = [line for line in table.splitlines() if line.startswith("ort-cpu")]
    assert row.split() == ["ort-cpu", "fp32", "8", "100", "1.00", "2.00", "3.00", "800.0"]
    assert "fewer than 100 calls" not in table
    assert "fewer than 100 calls" in _table([{**case, "calls": 99}], [])


def test_a_drift_of_exactly_ten_per_cent_is_steady() -> None:
    """Mutant: ``>=`` STEADY_DRIFT. Inference at 100 then 90 img/s drifted by exactly 10 %: the table warns only
    above that (the spread of the ratio on a shared box was larger, session 35)."""
    row = {"backend": "ort-cpu", "precision": "fp32", "batch": 8, "images": 100, "inferred": 100,
           "throughput_ips": 60.0, "inference_ips": 94.74, "inference_ips_before": 100.0,
           "inference_ips_after": 90.0, "inference_drift": -0.1, "ratio": 0.633}
    assert "not steady" not in _table([], [row])
    assert "inference ran 11% slower" in _table([], [{**row, "inference_ips_after": 89.0, "inference_drift": -0.11}])


# -- watch: each photograph screened once, whole, and not before ----------------------------------------------
def test_a_file_still_being_written_is_taken_only_once_it_stopped_changing(tmp_path: Path) -> None:
    """Mutants: a change after the first sight ignored; the settle time counted from the first sight instead of
    the last change. Settle 1 s: written at 0, grown at 0.5 (a camera writing slowly); at 1.2 it has been
    unchanged for 0.7 s only: a half-written photograph screened as truncated. At 1.5 it is complete."""
    now = [0.0]
    tracker = StableFiles(tmp_path, settle_ms=1000, clock=lambda: now[0])
    p = tmp_path / "IMG_0001.jpg"
    p.write_bytes(b"\xff\xd8" + b"a" * 100)
    assert tracker.poll() == []
    now[0] = 0.5
    with open(p, "ab") as fh:
        fh.write(b"b" * 100)
    assert tracker.poll() == []
    now[0] = 1.2
    assert tracker.poll() == []
    now[0] = 1.5
    assert tracker.poll() == [p]


def test_a_photograph_rewritten_with_the_same_size_within_the_second_is_taken_again(tmp_path: Path) -> None:
    """Mutant: file times compared to the second. Another photograph of the same size written over the first
    within the same second (a camera's retake, fixed-size DICOM or TIFF) is another version: screened again."""
    now = [0.0]
    tracker = StableFiles(tmp_path, settle_ms=0, clock=lambda: now[0])
    p = tmp_path / "IMG_0001.jpg"
    base = (int(p.parent.stat().st_mtime) - 100) * 10**9
    p.write_bytes(b"A" * 100)
    os.utime(p, ns=(base + 100_000_000, base + 100_000_000))
    tracker.poll()
    now[0] = 1.0
    assert tracker.poll() == [p]
    p.write_bytes(b"B" * 100)
    os.utime(p, ns=(base + 600_000_000, base + 600_000_000))
    now[0] = 2.0
    assert tracker.poll() == []  # a new version: it must settle first
    now[0] = 3.0
    assert tracker.poll() == [p]


def _taken_once(folder: Path, **tracker_options: float) -> tuple[StableFiles, Path, list[float]]:
    """A tracker on a fake clock that has just handed out one photograph (written at 0, taken at 1)."""
    now = [0.0]
    tracker = StableFiles(folder, settle_ms=0, clock=lambda: now[0], **tracker_options)
    p = folder / "IMG_0001.jpg"
    p.write_bytes(b"\xff\xd8x")
    tracker.poll()
    now[0] = 1.0
    assert tracker.poll() == [p]
    return tracker, p, now


def test_a_file_taken_for_its_retry_is_handed_out_once(tmp_path: Path) -> None:
    """Mutant: the retry time kept after the retry was taken. Until its outcome is known (``settled`` or
    ``retry_later`` again) a file taken for its retry must not come back at every poll: it would be screened
    at each one."""
    tracker, p, now = _taken_once(tmp_path)
    tracker.retry_later(p)
    now[0] = 1.0 + RETRY_FIRST_S
    assert tracker.poll() == [p]
    now[0] += 0.5
    assert tracker.poll() == []


def test_a_retry_due_after_the_full_check_is_still_taken_on_time(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant: a file awaiting its retry treated as quiet (left to the next full check). Taken at 1 and failed
    (the camera still held it), its retry is due at 41 (a wait of 40 s here); the full check at 31 finds it not
    yet due. It must still be taken at 41, not at the next full check at 61."""
    monkeypatch.setattr(watch_mod, "RETRY_FIRST_S", 40.0)
    tracker, p, now = _taken_once(tmp_path, rescan_s=30)
    tracker.retry_later(p)
    now[0] = 31.0
    assert tracker.poll() == []  # a full check; the retry is not due yet
    now[0] = 41.0
    assert tracker.poll() == [p]


def test_a_settled_file_starts_its_retries_from_the_first_wait_again(tmp_path: Path) -> None:
    """Mutant: ``settled`` keeps the failure count. A file that failed twice (waits of 2 and 4 s) and was then
    screened is rewritten later and fails once: its wait is the first one again (2 s), not 8 s."""
    now = [0.0]
    tracker = StableFiles(tmp_path, settle_ms=0, clock=lambda: now[0])
    p = tmp_path / "IMG_0001.jpg"
    p.write_bytes(b"\xff\xd8first")
    tracker.poll()
    now[0] = 1.0
    assert tracker.poll() == [p]
    for wait in (RETRY_FIRST_S, 2 * RETRY_FIRST_S):
        tracker.retry_later(p)
        now[0] += wait
        assert tracker.poll() == [p]
    tracker.settled(p)
    p.write_bytes(b"\xff\xd8second, another photograph")
    now[0] += 1
    assert tracker.poll() == []
    now[0] += 1
    assert tracker.poll() == [p]
    tracker.retry_later(p)
    now[0] += RETRY_FIRST_S
    assert tracker.poll() == [p]


def test_a_photograph_filed_away_and_back_is_taken_again(tmp_path: Path) -> None:
    """Mutant: ``forget`` keeps the version taken. The camera software filed the photograph away before it was
    read (watch then forgets it and writes no row) and put it back: a move keeps its size and time, so unless
    the tracker forgot what it took, it is never screened."""
    now = [0.0]
    tracker = StableFiles(tmp_path / "drop", settle_ms=0, clock=lambda: now[0])
    p = tmp_path / "drop" / "IMG_0001.jpg"
    p.parent.mkdir()
    p.write_bytes(b"\xff\xd8x")
    tracker.poll()
    now[0] = 1.0
    assert tracker.poll() == [p]
    os.replace(p, tmp_path / "away.jpg")
    tracker.forget(p)
    os.replace(tmp_path / "away.jpg", p)
    now[0] = 2.0
    tracker.poll()
    now[0] = 3.0
    assert tracker.poll() == [p]


def test_a_link_into_a_sibling_folder_whose_name_starts_alike_is_outside(tmp_path: Path) -> None:
    """Mutant: "inside" tested as a text prefix without the separator. ``/data/drop2`` starts with ``/data/drop``:
    a link in the drop folder to another clinic's ``drop2`` photograph would be screened into this report."""
    other = tmp_path / "drop2" / "patient.jpg"
    other.parent.mkdir()
    other.write_bytes(b"\xff\xd8other clinic")
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "link.jpg").symlink_to(other)
    now = [0.0]
    tracker = StableFiles(drop, settle_ms=0, clock=lambda: now[0])
    taken: list[Path] = []
    for i in range(3):
        now[0] = float(i)
        taken += tracker.poll()
    assert taken == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_named_pipe_called_jpg_is_never_taken(tmp_path: Path) -> None:
    """Mutant: only folders left out (not every file that is not a regular one). Reading a named pipe blocks until
    something writes to it."""
    os.mkfifo(tmp_path / "cam.jpg")
    now = [0.0]
    tracker = StableFiles(tmp_path, settle_ms=0, clock=lambda: now[0])
    for i in range(3):
        now[0] = float(i)
        assert tracker.poll() == []


def test_max_images_zero_is_refused() -> None:
    """Mutant: ``max_images < 0`` refused only. A watch with max_images 0 would stop before screening anything."""
    with pytest.raises(ConfigError, match="max_images must be >= 1"):
        WatchConfig(max_images=0)


def _refer_everything(s: Screener) -> None:
    """The tiny model's answers vary with the photograph: make every photograph a referral (npdr at 0.9)."""

    def infer(x: np.ndarray) -> dict[str, np.ndarray]:
        n = len(x)
        return {"probs": np.tile(np.float32([0.1, 0.9, 0.1]), (n, 1)),
                "site_maps": np.zeros((n, 3, 8, 8), np.float32)}

    s.backend.infer = infer  # type: ignore[method-assign]


class _PollLimits:
    """Records the limit of each poll; a poll after max_images was reached (limit 0) fails the test at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.limits: list[int | None] = []
        real = StableFiles.poll

        def poll(tracker: StableFiles, limit: int | None = None) -> list[Path]:
            self.limits.append(limit)
            assert limit != 0, "polled again after max_images were screened"
            return real(tracker, limit)

        monkeypatch.setattr(StableFiles, "poll", poll)


def test_watch_stops_at_max_images_and_counts_its_referrals(tiny_bundle: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutants: each poll allowed ``max_images`` photographs instead of those still to screen (one screened,
    two more arrive: three screened for ``--max-images 2``); ``screened > max_images`` to stop (the watch polls
    on until its timeout, or forever); a batch's referrals left out of the watch's summary (the session's
    "N referred" line read 0)."""
    inbox = tmp_path / "inbox"
    good_photos(inbox, 1)
    later = good_photos(tmp_path / "later", 2, start=1)
    polls = _PollLimits(monkeypatch)

    def arrive(r: object) -> None:  # the camera writes two more once the first was screened
        for p in later:
            if not (inbox / p.name).exists():
                shutil.copy2(p, inbox / p.name)

    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=4) as s:
        _refer_everything(s)
        total = watch_folder(s, inbox, tmp_path / "out",
                             WatchConfig(settle_ms=0, poll_s=0.01, max_images=2, timeout_s=600, refresh_s=100),
                             on_result=arrive)
    assert polls.limits[0] == 2 and polls.limits[-1] == 1
    assert (total.screened, total.refer) == (2, 2)
    assert total.counts == {"ok": 2, "ungradable": 0, "error": 0}
    assert len(results_jsonl(tmp_path / "out")) == 2  # the third waits for the next watch


def test_watch_does_not_retry_a_photograph_whose_content_is_the_error(tiny_bundle: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant: every error row scheduled for a retry. An undecodable file stays undecodable: retried, it is taken
    again at every retry (skipped by the results folder each time, and counted again as skipped); only failures
    outside the content (a lock, a failed inference) are retried."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "broken.jpg").write_bytes(b"%PDF-1.4 not a photograph\n" * 20)
    retried: list[Path] = []
    settled: list[Path] = []
    monkeypatch.setattr(StableFiles, "retry_later", lambda self, p: retried.append(p))
    monkeypatch.setattr(StableFiles, "settled", lambda self, p: settled.append(p))
    with Screener(tiny_bundle, "ort-cpu", threads=1) as s:
        total = watch_folder(s, inbox, tmp_path / "out",
                             WatchConfig(settle_ms=0, poll_s=0.01, max_images=1, timeout_s=600, refresh_s=100))
    assert total.counts["error"] == 1
    assert retried == [] and [p.name for p in settled] == ["broken.jpg"]


# -- the Screener API ------------------------------------------------------------------------------------------
def test_threads_true_is_refused(tiny_bundle: Path) -> None:
    """Mutant: the ``bool`` check dropped. ``threads=True`` (a flag passed where a count belongs) would run one
    thread without a word."""
    with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
        Screener(tiny_bundle, "ort-cpu", threads=True)


def test_screen_refuses_a_list_file_with_an_upper_case_suffix(tiny_bundle: Path, tmp_path: Path) -> None:
    """Mutant: the list suffix compared without lower-casing. ``DAY1.TXT`` (a Windows export) is a list of
    photographs, not one: ``screen()`` must say to use screen_many."""
    (photo,) = good_photos(tmp_path, 1)
    listing = tmp_path / "DAY1.TXT"
    listing.write_text(f"{photo}\n", encoding="utf-8")
    with Screener(tiny_bundle, "ort-cpu", threads=1) as s:
        with pytest.raises(ConfigError, match="is a list file"):
            s.screen(listing)


def test_screen_many_keeps_the_thumbnails_it_was_asked_for(tiny_bundle: Path, tmp_path: Path) -> None:
    """Mutant: ``thumbnail_side`` not passed on. A 320 x 320 photograph with ``thumbnail_side=48`` gives a
    48 x 48 thumbnail, in input order with the results."""
    photos = good_photos(tmp_path, 2)
    with Screener(tiny_bundle, "ort-cpu", threads=1) as s:
        results = list(s.screen_many(photos, thumbnail_side=48))
    assert [r.source for r in results] == [str(p) for p in photos]
    assert all(r.thumbnail is not None and r.thumbnail.shape == (48, 48, 3) for r in results)


def test_screen_to_counts_referrals_screened_now_and_earlier(tiny_bundle: Path, tmp_path: Path) -> None:
    """Mutants: referrals of photographs screened now left out of the summary; those an earlier run decided
    left out on a resumed run. Three photographs, each referred: 3 and 3 again, the whole set."""
    photos = good_photos(tmp_path / "in", 3)
    out = tmp_path / "out"
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=2) as s:
        _refer_everything(s)
        first = s.screen_to(out, photos, report=False)
        again = s.screen_to(out, photos, report=False)
    assert (first.screened, first.refer) == (3, 3)
    assert (again.screened, again.skipped, again.refer) == (0, 3, 3)


def test_a_run_with_an_ungradable_photograph_exits_1(tiny_bundle: Path, tmp_path: Path) -> None:
    """Mutant: only error rows make the exit code 1. ``uopsl-screen run`` returns ``RunSummary.exit_code``: a
    clinic's script that books retakes on exit code 1 would be told all was well while a photograph needs
    retaking (a checkerboard: no fundus, ungradable)."""
    import cv2

    (photo,) = good_photos(tmp_path / "in", 1)
    board = (np.indices((320, 320)).sum(axis=0) // 40 % 2 * 255).astype(np.uint8)
    assert cv2.imwrite(str(tmp_path / "in" / "board.png"), cv2.merge([board, board, board]))
    with Screener(tiny_bundle, "ort-cpu", threads=1) as s:
        both = s.screen_to(tmp_path / "out", [tmp_path / "in"], report=False)
        good = s.screen_to(tmp_path / "out_good", [photo], report=False)
    assert both.counts == {"ok": 1, "ungradable": 1, "error": 0} and both.exit_code == 1
    assert good.counts == {"ok": 1, "ungradable": 0, "error": 0} and good.exit_code == 0
