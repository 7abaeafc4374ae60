"""Session 54: how soon ``watch`` writes a photograph's row (a review measured 1.39 s at the defaults, 0.84 s with
``--settle-ms 0``: a new file was only recorded at its first sighting, and the loop slept a fixed ``--poll``).

With settle 0 a new file is now taken at its first sighting, and the loop sleeps until the earliest settle time
ends (``poll_s`` at most, ``MIN_PAUSE_S`` at least). Every test runs on a fake clock that only the watch's own
sleeps advance: nothing here asserts on real timings.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

import tinybundle
from tinybundle import good_photos, results_jsonl
from uopsl.runtime import watch as watch_mod
from uopsl.runtime.api import Screener
from uopsl.runtime.watch import MIN_PAUSE_S, RETRY_FIRST_S, StableFiles, WatchConfig, next_pause, watch_folder

tiny_bundle = tinybundle.tiny_bundle  # the session's shared bundle fixture


class _FakeTime:
    """``watch``'s ``time``: monotonic reads ``now``, which only sleep advances; each sleep is recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s > 0, "a busy loop"
        self.sleeps.append(s)
        self.now += s


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> _FakeTime:
    clock = _FakeTime()
    monkeypatch.setattr(watch_mod, "time", clock)
    return clock


def _count_polls(monkeypatch: pytest.MonkeyPatch, clock: _FakeTime,
                 before: list[Callable[[], object]] | None = None) -> list[float]:
    """Records the fake clock at each poll of the watch; ``before``: callables run before the poll of that
    index (a camera writing)."""
    polls: list[float] = []
    real = StableFiles.poll

    def poll(tracker: StableFiles, limit: int | None = None) -> list[Path]:
        if before is not None and len(polls) < len(before):
            before[len(polls)]()
        polls.append(clock.now)
        return real(tracker, limit)

    monkeypatch.setattr(StableFiles, "poll", poll)
    return polls


# -- the tracker ---------------------------------------------------------------------------------------------
def test_settle_0_takes_a_new_photograph_at_its_first_sighting(tmp_path: Path) -> None:
    now = [0.0]
    tracker = StableFiles(tmp_path, settle_ms=0, clock=lambda: now[0], take_new_at_once=True)
    p = tmp_path / "IMG_0001.jpg"
    p.write_bytes(b"\xff\xd8whole, renamed into place")
    assert tracker.poll() == [p]  # it took two polls
    now[0] = 0.5
    assert tracker.poll() == []  # once


def test_settle_0_still_waits_for_a_file_seen_changing_and_for_an_empty_one(tmp_path: Path) -> None:
    """A camera writing in place: an empty file is not taken at its first sighting (it must stay empty 1 s);
    a file seen to change must be seen unchanged once more, a poll later, and is no reason to wake early."""
    now = [0.0]
    tracker = StableFiles(tmp_path, settle_ms=0, clock=lambda: now[0], take_new_at_once=True)
    p = tmp_path / "IMG_0001.jpg"
    p.write_bytes(b"")
    assert tracker.poll() == [] and tracker.due_in() == pytest.approx(1.0)
    now[0] = 0.5
    p.write_bytes(b"\xff\xd8half")
    assert tracker.poll() == [] and tracker.due_in() is None  # the next poll, not a busy loop
    now[0] = 1.0
    assert tracker.poll() == [p]
    now[0] = 1.5
    p.write_bytes(b"\xff\xd8rewritten where it lies")
    assert tracker.poll() == []
    now[0] = 2.0
    assert tracker.poll() == [p]


def test_a_settle_time_above_0_is_not_shortened(tmp_path: Path) -> None:
    now = [0.0]
    tracker = StableFiles(tmp_path, settle_ms=1000, clock=lambda: now[0], take_new_at_once=True)
    p = tmp_path / "IMG_0001.jpg"
    p.write_bytes(b"\xff\xd8x")
    assert tracker.poll() == []
    now[0] = 0.999
    assert tracker.poll() == []
    now[0] = 1.0
    assert tracker.poll() == [p]


def test_due_in_is_the_earliest_settle_or_retry_time_still_ahead(tmp_path: Path) -> None:
    now = [0.0]
    tracker = StableFiles(tmp_path, settle_ms=1000, clock=lambda: now[0])
    assert tracker.poll() == [] and tracker.due_in() is None  # nothing to wait for
    (tmp_path / "empty.jpg").write_bytes(b"")  # due at 10 s (ten times the settle time)
    p = tmp_path / "IMG_0001.jpg"
    p.write_bytes(b"\xff\xd8x")  # due at 1 s
    assert tracker.poll() == []
    now[0] = 0.25
    assert tracker.due_in() == pytest.approx(0.75)
    now[0] = 1.0
    assert tracker.poll() == [p] and tracker.due_in() == pytest.approx(9.0)
    tracker.retry_later(p)  # its screening failed outside its content: taken again in RETRY_FIRST_S
    assert tracker.due_in() == pytest.approx(RETRY_FIRST_S)


def test_the_pause_is_poll_s_or_until_the_next_file_is_due_but_never_a_busy_loop() -> None:
    assert next_pause(0.5, None) == 0.5
    assert next_pause(0.5, 2.0) == 0.5
    assert next_pause(0.5, 0.2) == 0.2
    assert next_pause(0.5, 0.001) == next_pause(0.5, 0.0) == MIN_PAUSE_S
    assert next_pause(0.005, 0.001) == 0.005  # a poll set below the floor stays as set


# -- the watch loop ------------------------------------------------------------------------------------------
def _watch_one(bundle: Path, inbox: Path, out: Path, settle_ms: int, poll_s: float) -> int:
    """Watch ``inbox`` until one photograph is screened; how many were."""
    with Screener(bundle, "ort-cpu", threads=1, batch_size=1) as s:
        total = watch_folder(s, inbox, out, WatchConfig(settle_ms=settle_ms, poll_s=poll_s, max_images=1,
                                                        timeout_s=60, refresh_s=100))
    return total.screened


def test_watch_with_settle_0_screens_a_photograph_at_the_first_poll_that_sees_it(
        tiny_bundle: Path, tmp_path: Path, fake_time: _FakeTime, monkeypatch: pytest.MonkeyPatch) -> None:
    inbox = tmp_path / "inbox"
    good_photos(inbox, 1)
    polls = _count_polls(monkeypatch, fake_time)
    assert _watch_one(tiny_bundle, inbox, tmp_path / "out", settle_ms=0, poll_s=0.5) == 1
    assert polls == [0.0] and fake_time.sleeps == []  # before: a second poll, half a second later


def test_watch_sleeps_until_the_settle_time_ends(tiny_bundle: Path, tmp_path: Path, fake_time: _FakeTime,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Settle 1 s, poll 0.375 s: first seen at 0, taken at 1.0 (a pause of 0.25), not at the poll at 1.125."""
    inbox = tmp_path / "inbox"
    good_photos(inbox, 1)
    polls = _count_polls(monkeypatch, fake_time)
    assert _watch_one(tiny_bundle, inbox, tmp_path / "out", settle_ms=1000, poll_s=0.375) == 1
    assert polls == [0.0, 0.375, 0.75, 1.0] and fake_time.sleeps == [0.375, 0.375, 0.25]


def test_watch_with_settle_0_screens_a_photograph_written_in_place_once_whole(
        tiny_bundle: Path, tmp_path: Path, fake_time: _FakeTime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard (passes before and after): created empty, then written in three parts over three polls, the file is
    taken at the first poll that finds it unchanged, once and whole, and waiting for it is ``poll_s`` each time."""
    data = good_photos(tmp_path / "camera", 1)[0].read_bytes()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    p = inbox / "IMG_0001.jpg"
    third = len(data) // 3
    parts = [data[:0], data[:third], data[:2 * third], data]
    polls = _count_polls(monkeypatch, fake_time, [partial(p.write_bytes, part) for part in parts])
    assert _watch_one(tiny_bundle, inbox, tmp_path / "out", settle_ms=0, poll_s=0.25) == 1 and [r["status"] for r in results_jsonl(tmp_path / "out")] == ["ok"]
    assert polls == [0.0, 0.25, 0.5, 0.75, 1.0] and fake_time.sleeps == [0.25] * 4


def test_the_timeout_ends_the_pause(tiny_bundle: Path, tmp_path: Path, fake_time: _FakeTime,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """--timeout 0.7 with --poll 0.5 stops at 0.7 s after a last poll there, not at 1.0 (before: the pause ran on)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    polls = _count_polls(monkeypatch, fake_time)
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        total = watch_folder(s, inbox, tmp_path / "out",
                             WatchConfig(settle_ms=1000, poll_s=0.5, timeout_s=0.7, refresh_s=100))
    assert total.screened == 0
    assert polls == [0.0, 0.5, 0.7] and fake_time.sleeps == [0.5, pytest.approx(0.2)]
