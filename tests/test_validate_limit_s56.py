"""``uopsl validate --limit N`` above the data's size (session 56): all images are used, and it says so."""

from __future__ import annotations

import logging

import pytest

from uopsl.train.commands.validate import limit_records


def test_a_limit_above_the_data_uses_everything_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    records = list(range(7))
    with caplog.at_level(logging.WARNING):
        got = limit_records(records, 5000, seed=0)
    assert got == records
    assert "--limit 5000 is more than the 7 image(s) the data hold: all 7 are used" in caplog.text


def test_a_limit_within_the_data_draws_quietly(caplog: pytest.LogCaptureFixture) -> None:
    records = list(range(7))
    with caplog.at_level(logging.WARNING):
        assert limit_records(records, 7, seed=0) == records
        assert len(limit_records(records, 3, seed=0)) == 3
    assert "--limit" not in caplog.text
