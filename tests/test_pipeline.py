"""The screening pipeline and the Screener API: order, one result per input, bad files, bounded memory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from tinybundle import TinyStubBackend, fundus_jpeg, make_bad_zoo, tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.api import Screener
from uopsl.runtime.bundle import read_manifest
from uopsl.runtime.errors import BackendError, ConfigError
from uopsl.runtime.pipeline import InferenceHealth, PipelineConfig, ScreeningPipeline, opencv_single_threaded
from uopsl.runtime.inputs import WalkState, display_path, item_for_path, iter_inputs, walk_images


@pytest.fixture()
def screener(tiny_bundle: Path) -> Iterator[Screener]:
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=4, workers=2) as s:
        yield s


def test_order_kept_and_one_result_per_input_with_bad_files(tmp_path: Path, screener: Screener) -> None:
    zoo = make_bad_zoo(tmp_path / "zoo")
    good = [fundus_jpeg(tmp_path / "good" / f"g{i}.jpg", seed=i) for i in range(7)]
    # Interleave good and bad so batches mix runnable and failed inputs.
    bad = [p for p, _ in zoo.values()]
    inputs = [x for pair in zip(good + [None] * len(bad), bad) for x in pair if x is not None]
    inputs += good[len(bad):]
    results = list(screener.screen_many(inputs))
    assert [r.source for r in results] == [str(p) for p in inputs]
    expected = {str(p): status for p, status in zoo.values()} | {str(p): "ok" for p in good}
    assert {r.source: r.status for r in results} == expected
    for r in results:
        if r.status == "error":
            assert r.error and r.reasons and r.refer is None and not r.probs
        elif r.status == "ungradable":
            assert r.reasons and r.refer is None and not r.positive
        else:
            assert set(r.probs) == {"normal", "npdr", "dme"} and isinstance(r.refer, bool)
            assert r.timings["infer_ms"] > 0 and r.timings["preprocess_ms"] > 0
    reasons = {Path(r.source).name: r.reasons for r in results}
    assert reasons["one_pixel.png"] == ("too_small",) and reasons["huge.png"] == ("too_large",)
    assert "no_fov" in reasons["non_fundus.png"]


def test_decisions_come_from_the_manifest(tmp_path: Path, screener: Screener) -> None:
    paths = [fundus_jpeg(tmp_path / f"g{i}.jpg", seed=i) for i in range(5)]
    results = list(screener.screen_many(paths))
    probs = np.array([[r.probs[c] for c in screener.manifest.class_names] for r in results])
    positive, refer = screener.manifest.decide(probs)
    assert [r.refer for r in results] == refer.tolist()
    assert [set(r.positive) for r in results] == [
        {c for c, f in zip(screener.manifest.class_names, row) if f} for row in positive]


def test_heatmap_is_mapped_onto_the_original_geometry(tmp_path: Path, screener: Screener) -> None:
    p = fundus_jpeg(tmp_path / "wide.jpg", size=320)
    img = cv2.imread(str(p))
    wide = cv2.copyMakeBorder(img, 0, 0, 80, 40, cv2.BORDER_CONSTANT)  # 440 x 320, off-centre field
    cv2.imwrite(str(p), wide)
    r = screener.screen(p)
    assert r.status == "ok" and r.heatmap_class in r.class_names
    full = r.heatmap()
    assert full.shape == (320, 440)
    # The attention lives where the field of view is, not in the padding on the left.
    assert full[:, :60].max() == 0 and full[:, 100:380].max() > 0
    small = r.heatmap("npdr", shape=(160, 220))
    assert small.shape == (160, 220)
    # Another aspect ratio would misplace the map (up to 144 px in the review); refused, with a shape that fits.
    with pytest.raises(ConfigError, match=r"heatmap shape \(256, 256\) is not the photograph's 320x440 scaled down.*"
                                          r"\(186, 256\)"):
        r.heatmap("npdr", shape=(256, 256))
    with pytest.raises(ConfigError, match="unknown class"):
        r.heatmap("glaucoma")


def test_screen_accepts_path_bytes_and_array(tmp_path: Path, screener: Screener) -> None:
    p = fundus_jpeg(tmp_path / "a.jpg", seed=2)
    by_path = screener.screen(p)
    by_bytes = screener.screen(p.read_bytes())
    by_array = screener.screen(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB))
    assert by_path.probs == pytest.approx(by_bytes.probs, abs=0)  # same bytes, same decoder
    # An array arrives decoded at full resolution, while a large-enough JPEG file is decoded at
    # reduced DCT scale (PreprocessConfig.fast_decode): the model input differs by a fraction of
    # a grey level, so the probabilities agree closely but not bit for bit.
    assert by_path.probs == pytest.approx(by_array.probs, abs=2e-3)
    assert by_bytes.key.startswith("sha1:")
    fundus_jpeg(tmp_path / "b.jpg", seed=3)
    with pytest.raises(ConfigError, match="screen_many"):
        screener.screen(tmp_path)  # a folder expands to several inputs
    with pytest.raises(ConfigError, match="cannot screen"):
        screener.screen(3.5)


def test_streaming_memory_is_bounded(tiny_bundle: Path, tmp_path: Path) -> None:
    """The pipeline pulls at most a window of inputs ahead of what it has yielded."""
    p = fundus_jpeg(tmp_path / "a.jpg", seed=1)
    pulled = [0]

    def endless() -> Iterator[object]:
        for _ in range(200):
            pulled[0] += 1
            yield item_for_path(p)

    cfg = PipelineConfig(batch_size=4, workers=2, prefetch_batches=2)
    m = read_manifest(tiny_bundle)
    with Screener(tiny_bundle, "ort-cpu", threads=1) as s:
        pipe = ScreeningPipeline(s.backend, m, cfg)
        ahead = []
        for n, _ in enumerate(pipe.run(endless()), 1):
            ahead.append(pulled[0] - n)
    window = cfg.batch_size * (cfg.prefetch_batches + 1)
    assert n == 200 and max(ahead) <= window + cfg.batch_size


class _FailingBackend(TinyStubBackend):
    name = "failing"

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise BackendError("device lost")


def test_inference_failure_gives_error_rows_not_a_crash(tiny_bundle: Path, tmp_path: Path) -> None:
    paths = [fundus_jpeg(tmp_path / f"g{i}.jpg", seed=i) for i in range(3)]
    with _FailingBackend() as b:
        results = list(ScreeningPipeline(b, read_manifest(tiny_bundle), PipelineConfig(batch_size=2)).run(paths))
    assert [r.status for r in results] == ["error"] * 3
    assert all("device lost" in r.error for r in results)


class _ThreadCountingBackend(_FailingBackend):
    """Records OpenCV's thread setting at each inference call, then fails the batch."""

    seen: list[int]

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.seen.append(cv2.getNumThreads())
        raise BackendError("counted")


def test_runs_keep_opencv_single_threaded_and_restore_it(tiny_bundle: Path, tmp_path: Path) -> None:
    paths = [fundus_jpeg(tmp_path / f"g{i}.jpg", seed=i) for i in range(3)]
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        with _ThreadCountingBackend() as b:
            b.seen = []
            pipe = ScreeningPipeline(b, read_manifest(tiny_bundle), PipelineConfig(batch_size=2, workers=2))
            with opencv_single_threaded():  # nested (another run going on): restored only by the last one out
                assert len(list(pipe.run(paths))) == 3
                assert cv2.getNumThreads() == 1
            assert b.seen == [1, 1]  # two batches
        assert cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)


def test_iter_inputs_expands_folders_and_list_files(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.jpg", "d/a.PNG", "d/sub/c.tif", "d/.hidden.jpg", "d/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    lst = tmp_path / "list.txt"
    lst.write_text("# screening list\nd/a.PNG\n\n/abs/missing.jpg\n")
    got = [Path(i.source) for i in iter_inputs([tmp_path / "d", lst])]
    assert got == [tmp_path / "d/a.PNG", tmp_path / "d/b.jpg", tmp_path / "d/sub/c.tif",
                   tmp_path / "d/a.PNG", Path("/abs/missing.jpg")]
    keys = [i.key for i in iter_inputs([tmp_path / "d" / "b.jpg", "/abs/missing.jpg"])]
    assert keys[0].count("|") == 2 and keys[1].endswith("|missing")


def test_screener_runs_onnx_runtime_without_spin_waiting(screener: Screener) -> None:
    """Its decoding threads share the cores with inference (benchmarks/README.md has the figures)."""
    backend = screener.backend
    assert getattr(backend, "spin", None) is False
    opts = backend._session.get_session_options()  # type: ignore[attr-defined]
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_screener_says_which_backend_it_chose_once_open(tiny_bundle: Path) -> None:
    """``Screener.selection``: None before ``open``, then open_backend's choice with its reason."""
    s = Screener(tiny_bundle, "ort-cpu", threads=1)
    assert s.selection is None
    with s:
        assert s.selection is not None
        assert (s.selection.backend, s.selection.file) == ("ort-cpu", "model.onnx") and s.selection.reason


def test_walk_takes_each_folder_once_and_leaves_output_folders_out(tmp_path: Path) -> None:
    """A link back to a parent is not walked again; the output folder and any folder of results are skipped."""
    root = tmp_path / "in"
    for name in ("a.jpg", "sub/b.jpg", "out/thumbs/t.jpg", "old_session/c.jpg", "notes.txt", "scan.psd"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    (root / "old_session" / "results.jsonl").write_text("")
    (root / "sub" / "up").symlink_to("..")
    state = WalkState(exclude=[root / "out"])
    got = [p.relative_to(root).as_posix() for p in walk_images(root, state)]
    assert got == ["a.jpg", "sub/b.jpg"]
    assert sorted(Path(x).name for x in state.excluded) == ["old_session", "out"]
    assert dict(state.skipped) == {".txt": 1, ".psd": 1}
    # A top-level input inside the output folder is left out as well.
    assert list(iter_inputs([root / "out" / "thumbs" / "t.jpg"], state=state)) == []


def test_list_files_with_a_bom_and_missing_top_level_inputs(tmp_path: Path) -> None:
    (tmp_path / "p.jpg").write_bytes(b"x")
    lst = tmp_path / "notepad.txt"
    lst.write_bytes(b"\xef\xbb\xbfp.jpg\r\nnotepad.txt\r\n")
    assert [Path(i.source).name for i in iter_inputs([lst])] == ["p.jpg"]
    with pytest.raises(ConfigError, match="input .*nonexistent does not exist; expected a photograph, a folder"):
        list(iter_inputs([tmp_path / "nonexistent"]))
    assert [i.key.endswith("|missing") for i in iter_inputs([tmp_path / "gone.jpg"])] == [True]  # named: its row


def test_keys_resolve_links_and_names_that_are_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    p = tmp_path / "d" / "x.jpg"
    p.write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "d")
    assert item_for_path(tmp_path / "d" / ".." / "d" / "x.jpg").key == item_for_path(tmp_path / "link" / "x.jpg").key
    raw = os.fsdecode(b"caf\xe9.jpg")
    assert display_path(raw) == "caf\ufffd.jpg" and display_path("ünïcødé_眼底.jpg") == "ünïcødé_眼底.jpg"


def test_inference_health_gives_up_after_the_limit_in_a_row() -> None:
    h = InferenceHealth(limit=2)
    h.failed(BackendError("a"), "ort-cpu")
    h.succeeded()
    h.failed(BackendError("b"), "ort-cpu")
    with pytest.raises(BackendError, match="ort-cpu: inference failed 2 times in a row \\(last: c\\)"):
        h.failed(BackendError("c"), "ort-cpu")
    InferenceHealth(limit=0).failed(BackendError("never raises"), "x")


@pytest.mark.parametrize("bad", ["a missing path without a photograph's suffix", "None", "the caller's generator"])
def test_an_input_that_raises_comes_after_every_result_before_it(tmp_path: Path, screener: Screener,
                                                                 bad: str) -> None:
    """A review: screen_many reads ahead, and one input that raises (or a camera generator that fails)
    threw away the results of the photographs already taken (10 good + 1 bad gave 0 results)."""
    good = [fundus_jpeg(tmp_path / f"g{i}.jpg", seed=i) for i in range(10)]
    after = [fundus_jpeg(tmp_path / f"h{i}.jpg", seed=20 + i) for i in range(3)]

    def source() -> Iterator[object]:
        yield from good
        if bad == "the caller's generator":
            raise OSError("camera disconnected")
        yield tmp_path / "IM000123" if bad.startswith("a missing") else None
        yield from after

    results = []
    with pytest.raises((ConfigError, OSError)) as err:
        for r in screener.screen_many(source()):
            results.append(r)
    assert [r.source for r in results] == [str(p) for p in good] and all(r.status == "ok" for r in results)
    assert err.value.input_index == 10  # type: ignore[union-attr]
    if hasattr(err.value, "add_note"):  # Python 3.11+: the traceback says it too
        assert any("raised at input 10" in note for note in err.value.__notes__)


def test_a_backend_that_keeps_failing_names_the_inputs_left_without_a_result(tiny_bundle: Path,
                                                                             tmp_path: Path) -> None:
    paths = [fundus_jpeg(tmp_path / f"g{i}.jpg", seed=i) for i in range(12)]
    from tinybundle import fail_after_first_batch

    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=2, workers=2, max_inference_failures=2) as s:
        fail_after_first_batch(s.backend, "tensorrt: an illegal memory access")
        results = []
        with pytest.raises(BackendError, match="inference failed 2 times in a row") as err:
            for r in s.screen_many(paths):
                results.append(r)
    unscreened = [it.source for it in err.value.unscreened]  # type: ignore[attr-defined]
    assert [r.status for r in results] == ["ok", "ok", "error", "error"]
    # Every input taken from the caller has a result or is named: none lost, none twice.
    assert [r.source for r in results] + unscreened == [str(p) for p in paths[:len(results) + len(unscreened)]]
    assert len(unscreened) >= 2


def test_bad_arguments_are_refused_when_the_screener_is_made(tiny_bundle: Path) -> None:
    """A review: an unknown backend was refused only at open(), and batch_size="8" gave a bare TypeError."""
    for kwargs, match in (({"backend": "onnxruntime"}, "unknown backend 'onnxruntime'"),
                          ({"precision": "int4"}, "unknown precision 'int4'"),
                          ({"batch_size": "8"}, "batch_size must be an integer, got '8'"),
                          ({"workers": 2.5}, "workers must be an integer"),
                          ({"max_inference_failures": True}, "max_inference_failures must be an integer")):
        with pytest.raises(ConfigError, match=match):
            Screener(tiny_bundle, **kwargs)  # type: ignore[arg-type]


def test_a_pil_image_is_refused_with_how_to_convert_it(screener: Screener) -> None:
    class FakePil:  # what the message keys on: PIL images have .mode and .convert
        mode = "RGB"

        def convert(self, mode: str) -> FakePil:
            return self

    with pytest.raises(ConfigError, match=r"cannot screen a FakePil; .*numpy.asarray\(image.convert\('RGB'\)\)"):
        screener.screen(FakePil())
