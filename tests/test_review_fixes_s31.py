"""Session 31: a results folder of 10^5 photographs (what reading and rewriting it costs, and how often watch does).

``benchmarks/bench_results_folder.py`` has the figures; these tests hold the behaviour the speed-ups must keep.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

import uopsl.runtime.watch as watch_mod
from tinybundle import good_photos, results_csv, tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.api import Screener
from uopsl.runtime.results import ResultStore, write_csv
from uopsl.runtime.watch import REFRESH_COST_FACTOR, WatchConfig, refresh_gap, watch_folder


def test_the_refresh_gap_grows_with_what_a_rewrite_costs() -> None:
    assert refresh_gap(10.0, 0.3) == 10.0  # a small folder: as configured
    assert refresh_gap(10.0, 9.3) == pytest.approx(REFRESH_COST_FACTOR * 9.3)  # 100,000 rows: ~93 s
    assert refresh_gap(0.0, 0.0) == 0.0


def test_watch_rewrites_the_outputs_less_often_when_rewriting_them_is_slow(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """With 10^5 rows a rewrite took ~10 s of CPU and watch did one after every batch (refresh_s 10): a busy
    camera kept a core rewriting results.csv. A fake clock: each rewrite "takes" 5 s, each poll 0.05 s."""
    clock = types.SimpleNamespace(now=0.0)

    def sleep(s: float) -> None:
        clock.now += s

    monkeypatch.setattr(watch_mod, "time", types.SimpleNamespace(monotonic=lambda: clock.now, sleep=sleep))
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    good_photos(inbox, 1)
    arrived = [1]

    def camera(_: object) -> None:  # each screened photograph is followed by the next one
        if arrived[0] < 40:
            good_photos(inbox, 1, start=arrived[0])
            arrived[0] += 1

    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        real = s.finalize
        rewrites: list[float] = []

        def slow_finalize(*a: object, **k: object) -> list[dict]:
            rewrites.append(clock.now)
            clock.now += 5.0
            return real(*a, **k)

        monkeypatch.setattr(s, "finalize", slow_finalize)
        summary = watch_folder(s, inbox, out, WatchConfig(settle_ms=0, poll_s=0.05, timeout_s=120, refresh_s=0),
                               on_result=camera)
    assert summary.screened == 40 and len(results_csv(out)) == 40  # the last rewrite lists every photograph
    # Every poll screened a photograph: one rewrite per poll (~24 in 120 s) before; now one per 50 s and the last.
    gaps = [b - a for a, b in zip(rewrites, rewrites[1:-1])]
    assert len(rewrites) <= 4 and all(g >= REFRESH_COST_FACTOR * 5.0 for g in gaps), rewrites


def _store_with(out: Path, lines: list[str]) -> ResultStore:
    out.mkdir()
    (out / "results.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return ResultStore(out)


@pytest.mark.parametrize("escape", ["\\udce9", "\\uDCE9"])
def test_rows_are_made_displayable_only_where_a_lone_surrogate_can_be(tmp_path: Path, escape: str) -> None:
    """latest_rows copied every row to replace lone surrogates (undecodable file names); now only rows whose
    line holds a \\u escape are looked at, in either case of hex digits (another writer may use upper case)."""
    plain = {"key": "/p/a.jpg|1|1", "id": "a-1", "source": "a.jpg", "status": "ok", "probs": {"x": 0.5}}
    odd = {"key": "/p/caf.jpg|2|2", "id": "caf-2", "source": "caf\udce9.jpg", "status": "ok", "probs": {"x": 0.1}}
    line = json.dumps(odd).replace("\\udce9", escape)
    with _store_with(tmp_path / "out", [json.dumps(plain), line]) as store:
        rows = store.latest_rows()
    assert [r["source"] for r in rows] == ["a.jpg", "caf\ufffd.jpg"]
    assert rows[1]["key"] == odd["key"]  # the lossless forms are kept
    write_csv(tmp_path / "r.csv", rows, ["x"])
    assert "caf\ufffd.jpg" in (tmp_path / "r.csv").read_text("utf-8-sig")


def test_the_csv_of_raw_rows_is_still_valid_utf8(tmp_path: Path) -> None:
    """write_csv no longer copies each row through _display first: each cell it writes is made valid."""
    rows = [{"key": "k", "id": "caf-2", "source": "caf\udce9.jpg", "status": "error", "error": "bad \udcff byte",
             "reasons": ["undecodable"], "probs": {}}]
    write_csv(tmp_path / "r.csv", rows, ["x"])
    text = (tmp_path / "r.csv").read_bytes().decode("utf-8-sig")
    assert "caf\ufffd.jpg" in text and "bad \ufffd byte" in text


def test_a_row_with_a_number_beyond_a_float_is_skipped_and_the_csv_still_written(tmp_path: Path) -> None:
    """JSON allows 10**400: such a probability passed the row check and every later rewrite of results.csv
    failed with OverflowError (second review of session 31)."""
    good = {"key": "/p/a.jpg|1|1", "id": "a-1", "source": "a.jpg", "status": "ok", "probs": {"x": 0.5}}
    huge = {"key": "/p/b.jpg|2|2", "id": "b-2", "source": "b.jpg", "status": "ok", "probs": {"x": 0.5}}
    line = json.dumps(huge).replace('"x": 0.5', '"x": 1' + "0" * 400)
    with _store_with(tmp_path / "out", [json.dumps(good), line]) as store:
        rows = store.latest_rows()
    assert [r["source"] for r in rows] == ["a.jpg"]
    assert write_csv(tmp_path / "r.csv", rows, ["x"]) == 1


def test_a_replaced_photograph_under_an_undecodable_name_keeps_its_displayable_copy(tmp_path: Path) -> None:
    """The copy latest_rows keeps of a replaced file's earlier row must be made displayable like its original."""
    first = {"key": "/p/caf.jpg|1|1", "id": "caf-1", "source": "caf\udce9.jpg", "status": "ok", "sha256": "a" * 64}
    second = {**first, "key": "/p/caf.jpg|2|2", "id": "caf-2", "sha256": "b" * 64}
    with _store_with(tmp_path / "out", [json.dumps(first), json.dumps(second)]) as store:
        rows = store.latest_rows()
    assert [(r["source"], bool(r.get("file_replaced"))) for r in rows] == [("caf\ufffd.jpg", True),
                                                                           ("caf\ufffd.jpg", False)]
