"""log.csv carries the step and time axes a plot needs (session 52): ``global_step`` and ``wall_time``.

Before, a row had the stage, the epoch and the step within the epoch only: a resumed run's curve could not be
drawn against steps or time without rebuilding them, and pretrain's rows and bar had no throughput.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
from test_mutation_audit_loops_s42 import _log_rows, _runner
from test_training_review_s51 import _pretrain, fundus_pool  # noqa: F401 - the fixture is used by name


def test_rows_carry_the_global_step_after_step_and_the_wall_time_last(tmp_path: Path) -> None:
    r = _runner(tmp_path)
    before = time.time()
    for ep, step, g in ((1, 1, 1), (1, 2, 2), (2, 1, 3)):
        r.info["global_step"] = g
        r.log_row({"stage": "finetune", "epoch": ep, "step": step, "loss": 0.5, "img_per_s": 10.0})
    with open(tmp_path / "run" / "log.csv", newline="", encoding="utf-8") as fh:
        head = next(csv.reader(fh))
    assert head == ["stage", "epoch", "step", "global_step", "loss", "img_per_s", "wall_time"]
    rows = _log_rows(tmp_path / "run")
    assert [int(d["global_step"]) for d in rows] == [1, 2, 3]
    times = [float(d["wall_time"]) for d in rows]
    assert before - 1 <= times[0] <= times[-1] <= time.time() + 1


def test_a_log_begun_by_an_older_version_keeps_its_header_and_columns(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "log.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("stage", "epoch", "step", "loss"), ("finetune", 1, 1, 0.5)])
    r = _runner(tmp_path)
    r.info["global_step"] = 2
    r.log_row({"stage": "finetune", "epoch": 1, "step": 2, "loss": 0.25})
    with open(run / "log.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows == [["stage", "epoch", "step", "loss"], ["finetune", "1", "1", "0.5"], ["finetune", "1", "2", "0.25"]]


def test_pretrain_logs_its_throughput_and_steps(fundus_pool: Path, tmp_path: Path,  # noqa: F811
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _pretrain(["--fundus", f"folder:{fundus_pool}", "--variant", "p_only", "--out", str(tmp_path / "p"),
                         "--epochs", "2", "--no-augment", "--batch-size", "2"], capsys)
    assert rc == 0, err
    rows = _log_rows(tmp_path / "p")
    assert [int(d["global_step"]) for d in rows] == list(range(1, len(rows) + 1)) and len(rows) >= 4
    assert [int(d["epoch"]) for d in rows] == sorted(int(d["epoch"]) for d in rows) and rows[-1]["epoch"] == "2"
    assert all(float(d["img_per_s"]) > 0 for d in rows)
