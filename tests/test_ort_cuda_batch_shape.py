"""ONNX Runtime's CUDA backend keeps one batch shape: smaller batches run padded to the previous call's size.

On an H200 (session 40, ``benchmarks/results/gpu-h200-2026-12-04/probe_batch_shapes.json``) the CUDA provider
spent 0.8-1.2 s on the first call after every change of batch size, shapes it had run before included, against
3.5 ms for a batch of 16; a screening run's batch that lost an ungradable photograph paid that twice. These tests
run on the CPU: the session is the real CPU one behind a stand-in that reports the CUDA provider first and records
the shapes it is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tinybundle import good_photos, tiny_bundle  # noqa: F401 - session fixture
from tinymodel import random_fundus_batch
from uopsl.runtime.backends.onnxruntime import OrtBackend
from uopsl.runtime.bench import time_backend
from uopsl.runtime.bundle import read_manifest
from uopsl.runtime.pipeline import PipelineConfig, ScreeningPipeline
from uopsl.runtime.inputs import item_for_path


class SessionAsIfOnCuda:
    """The CPU session, reporting the CUDA provider first and recording the input shape of each run."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.shapes: list[tuple[int, ...]] = []

    def get_providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
        (x,) = feeds.values()
        self.shapes.append(tuple(x.shape))
        return self._session.run(names, feeds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def on_cuda(backend: OrtBackend) -> SessionAsIfOnCuda:
    fake = SessionAsIfOnCuda(backend._session)
    backend._session = fake
    return fake


def images(n: int, seed: int) -> np.ndarray:
    return np.stack(random_fundus_batch(n, 64, seed=seed))


def test_a_smaller_batch_runs_padded_to_the_previous_size_with_its_own_outputs(tiny_bundle: Path) -> None:
    x8, x3 = images(8, 1), images(3, 2)
    with OrtBackend(tiny_bundle / "model.onnx", "cpu", threads=1) as plain:
        want = plain.infer(x3)
    with OrtBackend(tiny_bundle / "model.onnx", "cpu", threads=1) as b:
        fake = on_cuda(b)
        b.infer(x8)
        assert b.last_padded_to == 0
        got = b.infer(x3)
        assert fake.shapes == [(8, 64, 64, 3), (8, 64, 64, 3)]
        assert b.last_padded_to == 8
        assert set(got) == set(want)
        for name in want:  # only the 3 images' rows come back, the same as run alone
            assert got[name].shape == want[name].shape
            np.testing.assert_allclose(got[name], want[name], atol=1e-6)
        b.infer(x8)  # the previous size again: nothing to pad
        assert b.last_padded_to == 0 and fake.shapes[-1] == (8, 64, 64, 3)


def test_a_larger_batch_runs_as_it_is_and_becomes_the_shape_kept(tiny_bundle: Path) -> None:
    with OrtBackend(tiny_bundle / "model.onnx", "cpu", threads=1) as b:
        fake = on_cuda(b)
        b.infer(images(2, 1))
        b.infer(images(5, 2))
        b.infer(images(2, 3))
        assert [s[0] for s in fake.shapes] == [2, 5, 5]


@pytest.mark.parametrize(("previous", "n", "runs_as"), [
    (32, 1, 32),  # up to PAD_LIMIT rows are always worth one shape
    (33, 8, 8),  # beyond both PAD_LIMIT and 4 n: run as it is
    (33, 9, 33),  # 4 n = 36 covers 33
    (64, 16, 64),
    (65, 16, 16),
])
def test_padding_stops_where_the_previous_batch_is_far_larger(tiny_bundle: Path, previous: int, n: int,
                                                              runs_as: int) -> None:
    with OrtBackend(tiny_bundle / "model.onnx", "cpu", threads=1) as b:
        fake = on_cuda(b)
        b.infer(images(previous, 1))
        out = b.infer(images(n, 2))
        assert fake.shapes[-1][0] == runs_as
        assert len(out["probs"]) == n
        assert b.last_padded_to == (runs_as if runs_as > n else 0)


def test_the_cpu_provider_never_pads(tiny_bundle: Path) -> None:
    with OrtBackend(tiny_bundle / "model.onnx", "cpu", threads=1) as b:
        real = b._session
        seen: list[int] = []

        class Recording:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
                seen.append(len(next(iter(feeds.values()))))
                return real.run(names, feeds)

        b._session = Recording()
        b.infer(images(8, 1))
        b.infer(images(3, 2))
        assert seen == [8, 3] and b.last_padded_to == 0


def test_a_reopened_backend_forgets_the_previous_shape(tiny_bundle: Path) -> None:
    b = OrtBackend(tiny_bundle / "model.onnx", "cpu", threads=1)
    with b:
        on_cuda(b)
        b.infer(images(8, 1))
    with b:
        fake = on_cuda(b)
        b.infer(images(3, 2))
        assert fake.shapes == [(3, 64, 64, 3)]


def test_a_screening_run_on_cuda_keeps_one_shape_and_the_same_results(tiny_bundle: Path, tmp_path: Path) -> None:
    """6 photographs at batch 4: the last batch of 2 reaches the session as 4; every row as on the CPU."""
    photos = good_photos(tmp_path / "in", 6)
    m = read_manifest(tiny_bundle)
    cfg = PipelineConfig(batch_size=4, workers=1, worker_pool="threads")

    def screen(as_cuda: bool) -> tuple[list[Any], list[tuple[int, ...]]]:
        with OrtBackend(tiny_bundle / "model.onnx", "cpu", threads=1) as b:
            fake = on_cuda(b) if as_cuda else None
            results = list(ScreeningPipeline(b, m, cfg).run([item_for_path(p) for p in photos]))
        return results, (fake.shapes if fake else [])

    plain, _ = screen(False)
    padded, shapes = screen(True)
    assert [s[0] for s in shapes] == [4, 4]
    assert [r.status for r in padded] == [r.status for r in plain] == ["ok"] * 6
    for a, b in zip(padded, plain):
        assert a.refer == b.refer
        np.testing.assert_allclose([a.probs[c] for c in m.class_names], [b.probs[c] for c in m.class_names],
                                   atol=1e-6)


class CountingBackend:
    """time_backend's view of a backend: infer and the attributes it reads."""

    def __init__(self, padded_to: int = 0) -> None:
        self.sizes: list[int] = []
        self.last_padded_to = padded_to

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.sizes.append(len(x))
        return {}


def test_bench_times_the_smallest_batch_first_and_says_when_calls_were_padded() -> None:
    b = CountingBackend()
    rows = time_backend(b, (16, 1), 2, 1, images(4, 0))  # type: ignore[arg-type]
    assert [r["batch"] for r in rows] == [1, 16]
    assert b.sizes == [1, 1, 1, 16, 16, 16]
    assert all("padded_to" not in r for r in rows)
    padded = time_backend(CountingBackend(padded_to=16), (8,), 2, 0, images(4, 0))  # type: ignore[arg-type]
    assert padded[0]["padded_to"] == 16


def test_a_long_run_of_padded_calls_gives_way_to_the_smaller_shape(tiny_bundle: Path) -> None:
    """Single photographs after a batch: PAD_RUN_LIMIT padded calls, then one change of shape for good."""
    with OrtBackend(tiny_bundle / "model.onnx", "cpu", threads=1) as b:
        b.PAD_RUN_LIMIT = 3  # the class's 64, made small for the test
        fake = on_cuda(b)
        x1 = images(1, 2)
        b.infer(images(4, 1))
        for _ in range(5):
            b.infer(x1)
        assert [s[0] for s in fake.shapes] == [4, 4, 4, 4, 1, 1]
        assert b.last_padded_to == 0


def test_full_batches_between_short_ones_keep_them_padded(tiny_bundle: Path) -> None:
    """A screening run's pattern: the count of padded calls starts again at every full batch."""
    with OrtBackend(tiny_bundle / "model.onnx", "cpu", threads=1) as b:
        b.PAD_RUN_LIMIT = 2
        fake = on_cuda(b)
        x4, x3 = images(4, 1), images(3, 2)
        for x in (x4, x3, x3, x4, x3, x3, x4, x3):
            b.infer(x)
        assert {s[0] for s in fake.shapes} == {4}
