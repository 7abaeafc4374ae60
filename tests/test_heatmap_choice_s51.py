"""Which class's map the overlay shows, when classes have thresholds of their own (session 51).

A review: with a zero-shot class ``rp`` referable at threshold 0.12 beside trained classes at ~0.1-0.5, both
photographs where rp was the finding showed ``heatmap: amd``: the choice went by the raw score, which is not
comparable across classes. It goes by the margin over each class's own threshold (log-odds) now.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from test_mutation_audit_pipeline_s37 import _manifest, _Scripted
from tinybundle import fundus_jpeg
from uopsl.runtime.pipeline import PipelineConfig, ScreeningPipeline


def _rows(thresholds: tuple[float, float, float], probs: list[list[float]], tmp_path: Path) -> list:
    m = _manifest()
    m = replace(m, classes=tuple(replace(c, threshold=t) for c, t in zip(m.classes, thresholds)))
    photos = [fundus_jpeg(tmp_path / f"h{i}.jpg", seed=i) for i in range(len(probs))]
    with _Scripted([probs]) as backend:
        return list(ScreeningPipeline(backend, m, PipelineConfig(workers=1, batch_size=len(probs))).run(photos))


def test_the_finding_furthest_over_its_own_threshold_is_shown(tmp_path: Path) -> None:
    # classes normal, npdr, dme; npdr and dme referable. npdr 0.9 over 0.8 (+0.81 log-odds), dme 0.3 over 0.1
    # (+1.35): both are findings, dme is the clearer one though its score is a third of npdr's
    rows = _rows((0.5, 0.8, 0.1), [[0.2, 0.9, 0.3]], tmp_path)
    assert rows[0].positive == ("npdr", "dme") and rows[0].heatmap_class == "dme"


def test_without_a_finding_the_class_nearest_its_threshold_is_shown(tmp_path: Path) -> None:
    # nothing positive: normal 0.4 under 0.9 (-2.6), npdr 0.05 under 0.06 (-0.19), dme 0.3 under 0.5 (-0.85)
    rows = _rows((0.9, 0.06, 0.5), [[0.4, 0.05, 0.3]], tmp_path)
    assert rows[0].positive == () and rows[0].heatmap_class == "npdr"
