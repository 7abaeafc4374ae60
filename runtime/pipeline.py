"""The screening pipeline: inputs -> decode, preprocess, quality gate (worker pool) -> batched inference -> results.

Design:

* Inputs stream lazily (:func:`uopsl.runtime.inputs.iter_inputs` walks folders and list files as it
  goes), so the number of images is unbounded while memory is not: at most
  ``window`` images are being read/preprocessed or waiting for a batch.
* Decoding and preprocessing run in a thread pool (OpenCV releases the GIL),
  ahead of inference: while the backend computes batch *n*, the workers prepare
  batch *n+1*. Results come back in input order. While a run is going, OpenCV's
  own thread pool is set to one thread (:func:`opencv_single_threaded`): the
  parallelism comes from the workers, and nested threads on these small images
  cost CPU that inference needs.
* Every input yields exactly one :class:`ScreenResult`: ``ok``, ``ungradable``
  (the quality gate said no; no screening decision is made) or ``error`` (the
  file could not be read or decoded; the reason says why). A bad file never
  stops the batch.
* Decisions come from :meth:`Manifest.decide`, the one place they are made.
* The predilection heatmap is kept at model resolution (K small maps) plus the
  geometry, and mapped onto the original image only on request
  (:meth:`ScreenResult.heatmap`), so the hot loop stays cheap.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import logging
import numbers
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import (
    BrokenExecutor,
    CancelledError,
    Executor,
    Future,
    ThreadPoolExecutor,
)
from concurrent.futures import TimeoutError as FutureTimeoutError  # not the builtin before Python 3.11
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from uopsl.runtime import quality
from uopsl.runtime.backends.base import GPU_BACKENDS, Backend
from uopsl.runtime.bundle import Manifest
from uopsl.runtime.errors import BackendClosedError, BackendError, ConfigError, ImageDecodeError, ImageError, UopslError
from uopsl.runtime.inputs import InputItem, as_items, display_path
from uopsl.runtime.parallelism import check_parallelism
from uopsl.runtime.preprocess import Geometry, Preprocessed, PreprocessConfig, preprocess, read_bytes
from uopsl.runtime.quality import QualityConfig
from uopsl.runtime.results import probability_value
from uopsl.runtime.workerpool import (
    discard_pool,
    forget_worker_processes,
    new_process_pool,
    replace_worker_processes,
    wait_prepared,
    worker_alive,
    worker_processes,
)

log = logging.getLogger(__name__)

_cv_lock = threading.Lock()
_cv_users = 0
_cv_saved = 0


@contextmanager
def opencv_single_threaded() -> Iterator[None]:
    """Run OpenCV single-threaded inside the block (process-wide), restoring its setting after.

    The preprocessing workers already use every core; OpenCV's parallel loops on
    top of them cost ~0.4 ms of CPU per photograph on a 2-core box (TVHL at
    224 px: 4.03 -> 3.66 ms, ``benchmarks/bench_preprocess.py --pipeline 224``) for no speed. Nested and concurrent
    runs share one count, so the setting comes back when the last one ends; it is
    process-wide for as long as a run's generator is alive, and a setting another
    thread makes meanwhile is replaced by the one saved at the first entry.
    """
    global _cv_users, _cv_saved
    with _cv_lock:
        if _cv_users == 0:
            _cv_saved = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _cv_users += 1
    try:
        yield
    finally:
        with _cv_lock:
            _cv_users -= 1
            if _cv_users == 0:
                cv2.setNumThreads(_cv_saved)


STATUSES = ("ok", "ungradable", "error")


# -- results -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ScreenResult:
    """The screening outcome for one input.

    status: ``ok`` | ``ungradable`` | ``error``. ``probs`` (class -> probability),
    ``positive`` and ``refer`` are filled for ``ok``; for ``ungradable`` only
    ``probs``, and only with ``infer_ungradable``: ``positive`` stays empty and
    ``refer`` None, since no decision is made on an ungradable image. ``reasons`` lists the quality gate's or the
    error's reasons; ``error`` is the one-line message of a failure.
    ``site_maps`` are the per-class predilection maps over the model input;
    :meth:`heatmap` maps one onto the original image.
    """

    id: str
    source: str
    key: str
    status: str
    probs: dict[str, float] = field(default_factory=dict)
    positive: tuple[str, ...] = ()
    refer: bool | None = None
    gradable: bool | None = None
    quality_score: float | None = None
    reasons: tuple[str, ...] = ()
    error: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    heatmap_class: str = ""
    site_maps: np.ndarray | None = field(default=None, repr=False, compare=False)
    geometry: Geometry | None = field(default=None, repr=False, compare=False)
    thumbnail: np.ndarray | None = field(default=None, repr=False, compare=False)
    class_names: tuple[str, ...] = field(default=(), repr=False, compare=False)
    content_sha256: str = ""

    def heatmap(self, cls: str | None = None, *, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The predilection map of ``cls`` (default: ``heatmap_class``) on the original image grid.

        ``shape`` (h, w) gives a proportionally downscaled grid instead of the
        full original (cheaper for display). Values are the model's site
        attention, 0 outside the field of view crop.
        """
        if self.site_maps is None or self.geometry is None:
            raise ConfigError(f"{self.source}: no heatmap (status {self.status})")
        name = cls or self.heatmap_class
        if name not in self.class_names:
            raise ConfigError(f"unknown class {name!r}; the model has {list(self.class_names)}")
        m = self.site_maps[self.class_names.index(name)]
        g = self.geometry
        if shape is not None and tuple(shape) != (g.orig_h, g.orig_w):
            h, w = shape
            # One scale for both axes (the crop is square): another aspect ratio would misplace the map.
            # (each side rounded to whole pixels: within half a pixel of the exact scale on each axis)
            if not (h >= 1 and w >= 1 and abs(h * g.orig_w - w * g.orig_h) <= 0.5 * (g.orig_w + g.orig_h) + 1e-9):
                raise ConfigError(f"heatmap shape {tuple(shape)} is not the photograph's {g.orig_h}x{g.orig_w} scaled "
                                  f"down (h, w); give e.g. ({max(1, round(g.orig_h * w / g.orig_w))}, {w})")
            g = scale_geometry(g, (h, w))
        return g.to_original(m)

    def to_row(self) -> dict[str, Any]:
        """The JSON-serialisable record written to results.jsonl.

        ``source`` is valid Unicode for display (:func:`display_path`); when the
        file name is not, ``source_path`` keeps it losslessly. ``sha256`` is the
        file's content hash, or that of in-memory encoded bytes (empty for
        decoded arrays and unreadable files).
        """
        shown = display_path(self.source)
        return {
            "id": self.id,
            "source": shown,
            **({"source_path": self.source} if shown != self.source else {}),
            "key": self.key,
            "sha256": self.content_sha256,
            "status": self.status,
            "refer": self.refer,
            "positive": list(self.positive),
            "probs": {k: probability_value(v) for k, v in self.probs.items()},
            "gradable": self.gradable,
            "quality_score": None if self.quality_score is None else round(float(self.quality_score), 4),
            "reasons": list(self.reasons),
            "error": display_path(self.error),
            "heatmap_class": self.heatmap_class,
            "timings_ms": {k: round(float(v), 3) for k, v in self.timings.items()},
        }


def scale_geometry(g: Geometry, shape: tuple[int, int]) -> Geometry:
    """The same crop geometry on an image resized to ``shape`` (h, w)."""
    sy, sx = shape[0] / g.orig_h, shape[1] / g.orig_w
    s = (sx + sy) / 2.0
    return Geometry(
        orig_h=shape[0], orig_w=shape[1], cx=g.cx * sx, cy=g.cy * sy, radius=g.radius * s,
        x0=int(round(g.x0 * sx)), y0=int(round(g.y0 * sy)), side=max(2, int(round(g.side * s))),
        size=g.size, fov_found=g.fov_found, fov_fill=g.fov_fill, fov_count=g.fov_count,
    )


# -- quality gate adapter -------------------------------------------------------------------
@dataclass(frozen=True)
class _Verdict:
    gradable: bool
    score: float
    reasons: tuple[str, ...]


def assess(pre: Preprocessed, quality_config: QualityConfig | None = None) -> _Verdict:
    """The quality gate's verdict (:func:`uopsl.runtime.quality.assess`), in the pipeline's own small form."""
    v = quality.assess(pre, quality_config)
    return _Verdict(bool(v.gradable), float(v.score), tuple(str(r) for r in v.reasons))


def assess_error(exc: ImageError) -> tuple[str, ...]:
    """Reasons for an input that failed before the gate (decode, size, I/O)."""
    return tuple(str(r) for r in quality.assess_error(exc).reasons)


# -- pipeline -------------------------------------------------------------------------------
#: ``PipelineConfig.worker_pool`` values.
WORKER_POOLS = ("auto", "threads", "processes")


@dataclass(frozen=True)
class PipelineConfig:
    """How the pipeline runs.

    batch_size: images per inference call. workers: preprocessing threads or
    processes (None: see :meth:`workers_for`). worker_pool: ``threads``,
    ``processes`` (spawned at first use and kept, :func:`uopsl.runtime.workerpool.worker_processes`) or ``auto``
    (see :meth:`pool_for`; the command line's default). Threads are the library's
    default because a spawned process imports the program's main script again:
    with processes, a script must keep its top-level code under
    ``if __name__ == "__main__":``, as Python requires of any spawned process.
    prefetch_batches: how many
    batches the workers may prepare ahead (bounds memory; with worker processes
    at least 4 photographs per worker are read ahead, see ``ScreeningPipeline._window``).
    thumbnail_side: keep a downscaled copy of the original (longest side, px)
    for overlays and reports; 0 keeps none (fastest).
    infer_ungradable: also run the model on ungradable images (probabilities
    are recorded for information; no decision is made).
    max_inference_failures: after this many inference calls in a row fail,
    raise :class:`BackendError` instead of writing more error rows (a backend
    in a sticky failed state, such as after a CUDA fault, never recovers by
    itself); 0 never raises.
    """

    batch_size: int = 8
    workers: int | None = None
    prefetch_batches: int = 2
    thumbnail_side: int = 0
    infer_ungradable: bool = False
    max_inference_failures: int = 3
    worker_pool: str = "threads"

    def __post_init__(self) -> None:
        if self.worker_pool not in WORKER_POOLS:
            raise ConfigError(f"worker_pool must be one of {', '.join(WORKER_POOLS)}, got {self.worker_pool!r}")
        for name in ("batch_size", "prefetch_batches", "thumbnail_side", "max_inference_failures", "workers"):
            v = getattr(self, name)
            if not (v is None and name == "workers") and (isinstance(v, bool) or not isinstance(v, numbers.Integral)):
                raise ConfigError(f"{name} must be an integer, got {v!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        check_parallelism("workers", self.workers)
        if self.prefetch_batches < 1:
            raise ConfigError(f"prefetch_batches must be >= 1, got {self.prefetch_batches}")
        if self.thumbnail_side < 0:
            raise ConfigError(f"thumbnail_side must be >= 0, got {self.thumbnail_side}")
        if self.max_inference_failures < 0:
            raise ConfigError(f"max_inference_failures must be >= 0, got {self.max_inference_failures}")

    @property
    def n_workers(self) -> int:
        return self.workers or max(1, min(4, os.cpu_count() or 1))

    def pool_for(self, backend_name: str, inputs: int | None = None) -> str:
        """``threads`` or ``processes``: what ``worker_pool`` means with this backend, for ``inputs`` photographs
        (None: not known ahead, such as a stream or a folder still to be walked).

        ``auto``: processes when the model runs on a GPU (the CPU cores are the workers' alone), there are
        two or more workers and the run is not known to be small (:meth:`small_run_limit`); threads otherwise. Why:
        the per-photograph work holds Python's GIL for part of its time, so threads stop scaling at about
        1.5x (session 23, 16 cores: 1.57x at 4 threads, slower beyond), which capped a GPU pipeline at 306
        photographs/s against 5,900/s of inference; processes reached 3.7x there (1,010/s end to end with 8).
        On a CPU backend the inference already takes every core, and each process adds its own ~70 MB
        (resident; numpy, OpenCV and the runtime), so threads stay the default. A small run gains nothing
        from processes: starting them costs more than its photographs take (one photograph through
        ``pipeline.run``: 367 ms with a worker process, 69 ms with threads; a session-53 review).
        """
        return self.pool_choice(backend_name, inputs)[0]

    def small_run_limit(self) -> int:
        """``auto`` prepares fewer photographs than this in threads, also for a GPU backend."""
        # Under one batch per worker process: starting them (~0.3-0.5 s, each imports numpy, cv2, uopsl) costs
        # more than threads lose to the GIL (306 against 1,010 photographs/s break even near 130 photographs).
        return self.batch_size * self.workers_for("processes")

    def pool_choice(self, backend_name: str, inputs: int | None = None) -> tuple[str, str]:
        """:meth:`pool_for`, and why (for the log)."""
        if self.worker_pool != "auto":
            return self.worker_pool, f"worker_pool={self.worker_pool!r} asked for"
        if backend_name not in GPU_BACKENDS:
            return "threads", f"auto: {backend_name or 'the backend'} is not a GPU backend"
        if (self.workers or os.cpu_count() or 1) < 2:
            return "threads", "auto: one worker"
        limit = self.small_run_limit()
        if inputs is not None and inputs < limit:
            return "threads", (f"auto: {inputs} photograph(s), fewer than one batch ({self.batch_size}) for each "
                               f"of {self.workers_for('processes')} worker processes ({limit})")
        many = "an unknown number of" if inputs is None else str(inputs)
        return "processes", f"auto: {backend_name} runs on a GPU, {many} photographs"

    def workers_for(self, pool: str) -> int:
        """``workers``, or the default for this kind of pool: threads, the cores (at most 4); processes, the
        cores less one for inference and the results (at least 2 where there are 2 cores, at most 8: on 16
        cores the pipeline read 593, 1,010, 986 and 926 photographs/s with 4, 8, 12 and 15 processes, its
        own results-side work the limit from 8 on)."""
        if self.workers:
            return self.workers
        cores = os.cpu_count() or 1
        return max(min(2, cores), min(8, cores - 1)) if pool == "processes" else self.n_workers


class InferenceHealth:
    """Counts inference calls that failed in a row, and gives up after ``limit`` of them.

    Why: one failed batch (a transient out-of-memory) should cost only its own
    rows, which say "inference failed" and are retried by the next run. But a
    backend whose device is in a sticky error state fails every later call; the
    caller must then reopen it, so after ``limit`` failures in a row this raises
    :class:`BackendError` saying so. One instance can span many pipelines (the
    :class:`~uopsl.runtime.api.Screener` keeps one per open backend).
    """

    def __init__(self, limit: int = 3) -> None:
        self.limit = limit
        self.failures = 0

    def succeeded(self) -> None:
        self.failures = 0

    def failed(self, exc: BaseException, backend: str) -> None:
        """Record a failure; raise :class:`BackendError` when it is the ``limit``-th in a row."""
        self.failures += 1
        if self.limit and self.failures >= self.limit:
            n, self.failures = self.failures, 0
            raise BackendError(
                f"{backend}: inference failed {n} times in a row (last: {' '.join(str(exc).split())}); "
                "the backend is probably in a failed state (e.g. after a GPU fault): close the Screener and "
                "open a new one (for uopsl-screen: run the same command again; photographs already "
                "screened are kept)"
            ) from exc


@dataclass
class _Prepared:
    item: InputItem
    pre: Preprocessed | None = None
    verdict: _Verdict | None = None
    error: str = ""
    reasons: tuple[str, ...] = ()
    thumbnail: np.ndarray | None = None
    geometry: Geometry | None = None
    timings: dict[str, float] = field(default_factory=dict)
    sha256: str = ""

    @property
    def runnable(self) -> bool:
        return self.pre is not None


def _thumbnail(rgb: np.ndarray, side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    s = min(1.0, side / max(h, w))
    if s >= 1.0:
        return rgb.copy()
    return cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class PrepareSpec:
    """What a worker needs to prepare one input (picklable: it travels to worker processes)."""

    preprocess: PreprocessConfig
    thumbnail_side: int = 0
    infer_ungradable: bool = False
    quality_config: Any = None


def prepare_item(item: InputItem, spec: PrepareSpec) -> _Prepared:
    """Read, decode, preprocess and gate one input; never raises for bad input (module level, so that a
    worker process can run it)."""
    out = _Prepared(item)
    t0 = time.perf_counter()
    cfg = spec.preprocess
    keep = spec.thumbnail_side > 0
    try:
        if item.path is not None:
            raw = read_bytes(item.path)
            # The content hash lets a later run recognise this photograph on a card that came back
            # under another path (ResultStore.find_moved); hashlib releases the GIL, so it runs in parallel.
            out.sha256 = hashlib.sha256(raw).hexdigest()
            data: bytes | np.ndarray = raw
        elif item.data is not None:
            data = item.data
            if not isinstance(data, np.ndarray):  # encoded bytes: the hash a file of them would have
                out.sha256 = hashlib.sha256(data).hexdigest()
        else:
            raise ImageDecodeError("no image data", source=item.source)
        t1 = time.perf_counter()
        pre = preprocess(data, cfg, source=item.source, keep_original=keep)
        t2 = time.perf_counter()
        out.timings = {"read_ms": (t1 - t0) * 1e3, "preprocess_ms": (t2 - t1) * 1e3}
        if keep and pre.original is not None:
            out.thumbnail = _thumbnail(pre.original, spec.thumbnail_side)
            pre = dataclasses.replace(pre, original=None)  # keep only the thumbnail in memory
        out.verdict = assess(pre, spec.quality_config)
        out.timings["quality_ms"] = (time.perf_counter() - t2) * 1e3
        if pre.unenhanced is not None:  # only the gate reads it: not carried to the batch (nor between processes)
            pre = dataclasses.replace(pre, unenhanced=None)
        if out.verdict.gradable or spec.infer_ungradable:
            out.pre = pre
        else:
            out.reasons = out.verdict.reasons
            out.geometry = pre.geometry
    except ImageError as exc:
        out.error = _one_line(exc, item.source)
        out.reasons = assess_error(exc)
    except UopslError as exc:
        out.error = _one_line(exc, item.source)
        out.reasons = (type(exc).__name__,)
    except MemoryError as exc:
        out.error = f"out of memory while decoding ({exc})"
        out.reasons = ("too_large",)
    except Exception as exc:  # noqa: BLE001 - a bad file must never stop the batch
        log.debug("unexpected failure on %s", item.source, exc_info=True)
        return _internal_error(item, exc, out.timings, out.sha256)
    return out


def prepare_items(items: list[InputItem], spec: PrepareSpec) -> list[_Prepared]:
    """:func:`prepare_item` for each of ``items``: one task for a worker process carries several."""
    return [prepare_item(item, spec) for item in items]


def _internal_error(item: InputItem, exc: BaseException, timings: dict[str, float] | None = None,
                    sha256: str = "") -> _Prepared:
    """The row of an input whose preparation failed in a way no photograph should make it fail."""
    return _Prepared(item, error=f"{type(exc).__name__}: {exc}", reasons=("internal_error",),
                     timings=dict(timings or {}), sha256=sha256)


#: Most inputs one task carries to a worker process (see ScreeningPipeline._window).
MAX_PER_TASK = 8

#: Breaks of the worker pool one run recovers from before it stops (each costs a pool restart, ~1 s).
MAX_POOL_RESTARTS = 10


class ScreeningPipeline:
    """Streams inputs through preprocessing workers and a backend; yields results in input order.

    The backend must already be entered (``with backend:``); the pipeline does
    not own it, so one backend can serve many runs.
    """

    def __init__(self, backend: Backend, manifest: Manifest, config: PipelineConfig | None = None,
                 quality_config: Any = None, health: InferenceHealth | None = None,
                 before_batch: Callable[[], None] | None = None) -> None:
        """``before_batch``: called before each batch is inferred; an exception it raises ends the run (the
        Screener re-checks the bundle's signature there)."""
        self.before_batch = before_batch
        self.backend = backend
        self.manifest = manifest
        self.config = config or PipelineConfig()
        self.quality_config = quality_config
        self.health = health if health is not None else InferenceHealth(self.config.max_inference_failures)
        self.class_names = manifest.class_names
        self._thresholds = np.array([c.threshold for c in manifest.classes], np.float64)
        self._referable = frozenset(c.name for c in manifest.classes if c.referable)
        self._maps_name = manifest.output_names[2] if len(manifest.output_names) > 2 else "site_maps"
        self._probs_name = manifest.output_names[0] if manifest.output_names else "probs"
        self._spec = PrepareSpec(manifest.preprocess, self.config.thumbnail_side, self.config.infer_ungradable,
                                 quality_config)

    # -- per image (worker threads or processes) --------------------------------------------------
    def prepare(self, item: InputItem) -> _Prepared:
        """Read, decode, preprocess and gate one input; never raises for bad input."""
        return prepare_item(item, self._spec)

    def _prepare_many(self, chunk: list[InputItem]) -> list[_Prepared]:
        return [self.prepare(item) for item in chunk]

    def _window(self, processes: bool) -> tuple[int, int]:
        """How many inputs may be taken ahead of the results, and how many go to a worker per task.

        Threads: ``batch_size * (prefetch_batches + 1)``, one per task. Processes: each task costs the
        parent ~0.7 ms of GIL-holding work (the executor's threads pickle, receive and unpickle it; 2-core
        AVX2 box, session 24), which capped the pipeline near 1,000 photographs/s on a 16-core GPU machine,
        so a task carries several inputs, as many as still leaves two tasks per worker in flight; the
        window is at least 4 inputs per worker for that (32 with 8 workers).
        """
        window = self.config.batch_size * (self.config.prefetch_batches + 1)
        if not processes:
            return window, 1
        workers = self.config.workers_for("processes")
        window = max(window, 4 * workers)
        per_task = max(1, min(MAX_PER_TASK, window // (2 * workers)))
        return window, per_task

    # -- batches (main thread) -----------------------------------------------------------------
    def _finish(self, batch: list[_Prepared]) -> list[ScreenResult]:
        runnable = [p for p in batch if p.runnable]
        outputs: dict[str, np.ndarray] = {}
        infer_ms = 0.0
        failure = ""
        if runnable:
            x = np.stack([p.pre.image for p in runnable])  # type: ignore[union-attr]
            t0 = time.perf_counter()
            try:
                outputs = self.backend.infer(x)
            except BackendClosedError:  # not these photographs' failure: stop, write no rows for them
                raise
            except UopslError as exc:
                failure = str(exc)
                log.error("inference failed on a batch of %d: %s", len(runnable), exc)
                self.health.failed(exc, getattr(self.backend, "name", "backend"))
            infer_ms = (time.perf_counter() - t0) * 1e3 / len(runnable)
        probs = outputs.get(self._probs_name)
        maps = outputs.get(self._maps_name)
        bad_rows: np.ndarray = np.zeros(len(runnable), bool)
        if probs is not None:
            # A photograph whose probabilities are not finite (an FP16 overflow, say) is that photograph's
            # inference error; finite values outside [0, 1] are the bundle's (decide says so and stops).
            bad_rows = np.asarray(~np.isfinite(np.asarray(probs, np.float64)).all(axis=1), bool)
            self._judge_health(bad_rows)
            if bad_rows.any():
                log.error("the model gave probabilities that are not finite for %d photograph(s) of a batch of %d",
                          int(bad_rows.sum()), len(runnable))
            positive, refer = self.manifest.decide(np.where(bad_rows[:, None], 0.0, probs))
            margins = self._margins(probs)
        elif outputs:
            self.health.succeeded()
        results: list[ScreenResult] = []
        j = 0
        for p in batch:
            if not p.runnable:
                results.append(self._failed(p))
                continue
            k = j
            j += 1
            if probs is None or bad_rows[k]:
                why = failure if probs is None else "the model's probabilities for it are not finite (NaN or inf)"
                results.append(ScreenResult(
                    id=p.item.id, source=p.item.source, key=p.item.key, status="error",
                    error=f"inference failed: {why}", reasons=("inference_error",), timings=p.timings,
                    thumbnail=p.thumbnail, class_names=self.class_names, content_sha256=p.sha256))
                continue
            pr = {c: float(v) for c, v in zip(self.class_names, probs[k])}
            gradable = p.verdict.gradable if p.verdict else True
            pos = tuple(c for c, flag in zip(self.class_names, positive[k]) if flag) if gradable else ()
            top = self._heatmap_class(margins[k], pos)
            results.append(ScreenResult(
                id=p.item.id, source=p.item.source, key=p.item.key,
                status="ok" if gradable else "ungradable",
                probs=pr, positive=pos, refer=bool(refer[k]) if gradable else None,
                gradable=gradable, quality_score=p.verdict.score if p.verdict else None,
                reasons=p.verdict.reasons if p.verdict else (),
                timings={**p.timings, "infer_ms": infer_ms}, heatmap_class=top,
                site_maps=None if maps is None else np.array(maps[k], np.float32),
                geometry=p.pre.geometry if p.pre is not None else None,
                thumbnail=p.thumbnail, class_names=self.class_names, content_sha256=p.sha256,
            ))
        return results

    def _judge_health(self, bad_rows: np.ndarray) -> None:
        """A batch with no finite probability at all (``bad_rows`` all set) counts as a failed inference (a GPU
        in a failed state can return NaN for everything: after ``max_inference_failures`` such batches the run
        stops); any other answered batch as a success."""
        if len(bad_rows) and bad_rows.all():
            self.health.failed(BackendError(f"{getattr(self.backend, 'name', 'backend')}: no finite probability "
                                            "in a whole batch"), getattr(self.backend, "name", "backend"))
        else:
            self.health.succeeded()

    def _heatmap_class(self, margins: np.ndarray, positive: tuple[str, ...]) -> str:
        """The class whose map the overlay shows: the positive referable class furthest over its own threshold,
        else the positive one, else the class nearest its threshold.

        By the margin over each class's threshold, in log-odds, not by the raw score: scores are not comparable
        across classes (each has its own threshold), and a zero-shot class's uncalibrated score was nearly never
        the highest, so its map was not shown where it was the finding (a review, session 51).
        """
        order = [self.class_names[i] for i in np.argsort(-margins, kind="stable")]
        for wanted in ([c for c in order if c in positive and c in self._referable], [c for c in order if c in positive],
                       order):
            if wanted:
                return wanted[0]
        return ""

    def _margins(self, probs: np.ndarray) -> np.ndarray:
        """Each class's score over its threshold in log-odds, per row of ``probs`` (NaN scores last)."""
        eps = 1e-7
        p = np.clip(np.nan_to_num(np.asarray(probs, np.float64), nan=0.0), eps, 1 - eps)
        t = np.clip(self._thresholds, eps, 1 - eps)
        return (np.log(p) - np.log1p(-p)) - (np.log(t) - np.log1p(-t))

    def _failed(self, p: _Prepared) -> ScreenResult:
        if p.verdict is not None:  # decoded but ungradable
            return ScreenResult(
                id=p.item.id, source=p.item.source, key=p.item.key, status="ungradable",
                gradable=False, quality_score=p.verdict.score, reasons=p.verdict.reasons,
                timings=p.timings, thumbnail=p.thumbnail, class_names=self.class_names,
                geometry=p.geometry, content_sha256=p.sha256,
            )
        return ScreenResult(
            id=p.item.id, source=p.item.source, key=p.item.key, status="error", gradable=False,
            reasons=p.reasons, error=p.error, timings=p.timings, class_names=self.class_names,
            content_sha256=p.sha256,
        )

    def _fresh_processes(self, failed: Executor, exc: BaseException, item: InputItem) -> Executor:
        """A new shared worker pool after ``failed`` broke, checked with a trivial task; BackendError if it
        cannot run one (no worker process can start).

        Twice: the pool is shared, and another run's photograph that crashes its worker can break the fresh
        pool during the check; only a second fresh pool failing too says that workers cannot start."""
        previous: object = failed
        for _attempt in range(2):
            pool = replace_worker_processes(self.config.workers_for("processes"), previous)
            previous = pool
            try:
                if pool.submit(worker_alive).result(timeout=120):
                    return pool
            except BrokenExecutor:
                continue  # perhaps broken by another run's photograph meanwhile: one more fresh pool
            except (FutureTimeoutError, OSError, RuntimeError):
                break  # hung or refused: no second wait of 120 s
        forget_worker_processes(pool)  # terminates its workers, a hung one included
        err = BackendError(
            f"preprocessing worker processes stop as they start ({exc}), at {display_path(item.source)}; "
            "use worker threads (--worker-pool threads), or from a Python script keep its top-level code "
            "under `if __name__ == \"__main__\":` (worker processes import the main script again); "
            "photographs already screened are kept")
        raise err from exc

    def _check_spec_loads_in_a_worker(self) -> None:
        """ConfigError unless a worker process can load this run's settings. A quality_config whose class
        the main script defines under its ``__main__`` guard, or a notebook cell, pickles in the parent but
        not in a spawned worker, which then dies on every task: each photograph would be blamed in turn and
        given a ``decoder_crash`` row. Checked in a one-worker pool of its own: breaking the shared pool would
        break other runs that use it, and their crashes could break the check."""
        solo = new_process_pool(1)
        try:
            wait_prepared(solo.submit(worker_alive, self._spec), solo)
            return
        except BrokenExecutor as exc:
            cause: BaseException = exc
        finally:
            discard_pool(solo)
        solo = new_process_pool(1)
        try:
            wait_prepared(solo.submit(worker_alive), solo)  # without the settings: do workers start at all?
        except BrokenExecutor:
            return  # they do not: the run's own recovery says so, with its advice
        finally:
            discard_pool(solo)
        raise ConfigError(
            f"the quality_config ({type(self._spec.quality_config).__qualname__}) cannot be loaded in a worker "
            "process: its class is defined where a worker does not see it (under `if __name__ == \"__main__\":` "
            "or in a notebook). Define it at the top level of an importable module, or use worker_pool='threads'"
        ) from cause

    def _prepare_alone(self, item: InputItem) -> _Prepared:
        """``item`` in a one-worker pool of its own (shared with nothing, so nothing else can break it): an
        error row if the worker dies on it."""
        solo = new_process_pool(1)
        try:
            return wait_prepared(solo.submit(prepare_item, item, self._spec), solo)
        except BrokenExecutor:
            log.error("%s: preparing it stopped a worker process", display_path(item.source))
            return _Prepared(item, error="preparing this photograph stopped the worker process that read it (a "
                             "damaged or unusual file, or too little memory)", reasons=("decoder_crash",))
        except Exception as exc:  # noqa: BLE001 - this photograph's failure, not the run's
            return _internal_error(item, exc)
        finally:
            discard_pool(solo)

    def _worker_pool(self, processes: bool) -> contextlib.AbstractContextManager[Executor]:
        if not processes:
            return ThreadPoolExecutor(self.config.workers_for("threads"), thread_name_prefix="uopsl-prep")
        return contextlib.nullcontext(worker_processes(self.config.workers_for("processes")))  # outlives the run

    def run(self, items: Iterable[Any], *, count: int | None = None) -> Iterator[ScreenResult]:
        """Screen ``items`` (InputItems, paths, bytes or arrays); one result per input, in order.

        ``count``: how many photographs ``items`` holds, where the caller knows (None: not known); with
        ``worker_pool="auto"`` a small run is prepared in threads (:meth:`PipelineConfig.pool_for`).

        An input that cannot be taken at all (``None``, an object of another type, a missing path not
        named like a photograph) or an exception from ``items`` itself (a camera that disconnects)
        reaches the caller only after every result before it: inputs are read ahead, and those already
        taken would otherwise be lost. The exception gets ``input_index``, the number of results yielded
        before it (the position of the failing input, counting each photograph of a folder). A backend
        that fails ``max_inference_failures`` times in a row raises :class:`BackendError` with
        ``unscreened``: the inputs taken from ``items`` that got no result, to screen again after reopening.
        """
        bs = self.config.batch_size
        pool_kind, why = self.config.pool_choice(getattr(self.backend, "name", ""), count)
        processes = pool_kind == "processes"
        log.debug("worker pool: %d %s (%s)", self.config.workers_for(pool_kind), pool_kind, why)
        window, per_task = self._window(processes)
        source = iter(as_items(items))
        # (input, its task, its place in the task, the task's size)
        pending: collections.deque[tuple[InputItem, Future[list[_Prepared]], int, int]] = collections.deque()
        taken = 0
        broken: list[Exception] = []  # what the source raised: taken after the results before it
        # Breaks of the worker pool in this run; inputs found to crash their worker; breaks since the last such
        # input that the input first in line did not explain.
        restarts = culprits = unexplained = 0
        if processes:
            try:
                pickled = pickle.dumps(self._spec)
            except Exception as exc:  # noqa: BLE001 - whatever pickling raises
                raise ConfigError(f"worker processes need a quality_config that can be pickled ({exc}); use "
                                  "worker_pool='threads'") from exc
            if b"__main__" in pickled:  # a class of the main script: a worker may not have it
                self._check_spec_loads_in_a_worker()
        with opencv_single_threaded(), self._worker_pool(processes) as pool:

            def fill() -> None:
                """Take inputs until the window is full, ``per_task`` of them per task."""
                nonlocal taken
                while window - len(pending) >= per_task and not broken:
                    chunk: list[InputItem] = []
                    while len(chunk) < per_task:
                        try:
                            nxt = next(source, None)
                        except Exception as exc:  # noqa: BLE001 - re-raised in order below; Ctrl-C passes at once
                            broken.append(exc)
                            break
                        if nxt is None:
                            break
                        chunk.append(nxt)
                    if chunk:
                        taken += len(chunk)
                        future = submit(chunk)
                        pending.extend((it, future, j, len(chunk)) for j, it in enumerate(chunk))
                    if len(chunk) < per_task:  # the source ended or raised
                        return

            def submit(chunk: list[InputItem]) -> Future[list[_Prepared]]:
                if not processes:
                    return pool.submit(self._prepare_many, chunk)
                try:
                    return pool.submit(prepare_items, chunk, self._spec)
                except (BrokenExecutor, RuntimeError) as exc:
                    # A pool broken (or shut down) since the last result refuses new work at once: the
                    # failure is taken up in input order, by recover().
                    failed: Future[list[_Prepared]] = Future()
                    failed.set_exception(exc if isinstance(exc, BrokenExecutor) else BrokenExecutor(str(exc)))
                    return failed

            def resubmit_alone(which: Callable[[Future[list[_Prepared]]], bool]) -> None:
                """Send the pending inputs whose task ``which`` picks again, one per task."""
                for k in range(len(pending)):
                    waiting, f, _, _ = pending[k]
                    if which(f):
                        pending[k] = (waiting, submit([waiting]), 0, 1)

            def recover(item: InputItem, exc: BaseException) -> _Prepared:
                """The worker pool broke (a process died: a decoder crashed on a file, or it was killed for
                memory). Start a fresh pool, run ``item`` alone in a private one to learn whether it is the
                cause (then it gets an error row), and resubmit what is still pending, one input per task. A
                pool that cannot run a trivial task, more than ``MAX_POOL_RESTARTS`` inputs that crash their
                worker, or more than ``MAX_POOL_RESTARTS`` breaks that no input explains stop the run."""
                nonlocal pool, restarts, culprits, unexplained

                def stop(err: BackendError) -> BackendError:
                    _annotate(err, "unscreened", tuple(p.item for p in batch) + (item,)
                              + tuple(i for i, *_ in pending), "the inputs without a result are in its .unscreened")
                    return err

                # A break is blamed on the input first in line. When that input then runs alone without
                # harm (another input of the same moment was the cause, found at a later break), the break
                # is counted apart, so that each photograph that crashes its worker costs one of the
                # MAX_POOL_RESTARTS, however the inputs were grouped into tasks; and each such photograph
                # found clears the unexplained breaks before it (resubmitted in parallel, a crashing input
                # typically breaks the pool once while an innocent one is first in line).
                restarts += 1
                if culprits + 1 > MAX_POOL_RESTARTS or unexplained > MAX_POOL_RESTARTS:
                    raise stop(BackendError(
                        f"preprocessing worker processes stopped {restarts} times in this run (last: {exc}); "
                        "too little memory? Use fewer --workers or --worker-pool threads; photographs already "
                        "screened are kept")) from exc
                try:
                    pool = self._fresh_processes(pool, exc, item)
                except BackendError as err:
                    raise stop(err) from exc
                prep = self._prepare_alone(item)
                if prep.reasons == ("decoder_crash",):
                    culprits += 1
                    unexplained = 0
                else:
                    unexplained += 1
                # keep finished work
                resubmit_alone(lambda f: not (f.done() and not f.cancelled() and f.exception() is None))
                return prep

            def finish(batch: list[_Prepared]) -> list[ScreenResult]:
                try:
                    if self.before_batch is not None:
                        self.before_batch()
                    return self._finish(batch)
                except BackendError as exc:
                    if not isinstance(exc, BackendClosedError):
                        _annotate(exc, "unscreened", tuple(p.item for p in batch) + tuple(i for i, *_ in pending),
                                  "the inputs without a result are in its .unscreened")
                    raise

            try:
                fill()
                batch: list[_Prepared] = []
                n_run = 0
                while pending:
                    item, future, j, n = pending.popleft()
                    try:
                        prep = (wait_prepared(future, pool) if processes else future.result())[j]
                    except (BrokenExecutor, CancelledError) as exc:
                        if not processes:
                            raise
                        prep = recover(item, exc)
                    except Exception as exc:  # noqa: BLE001 - a task that could not travel to or from a worker
                        if not processes:
                            raise
                        if n > 1:  # one input of the task may be the cause: each again on its own, in order
                            resubmit_alone(lambda f, failed=future: f is failed)  # type: ignore[misc]
                            pending.appendleft((item, submit([item]), 0, 1))
                            continue
                        prep = _internal_error(item, exc)
                    fill()
                    batch.append(prep)
                    n_run += prep.runnable
                    # Flush on a full batch, at the end (or before the source's exception), or when failures
                    # pile up (bounded memory).
                    if n_run >= bs or not pending or len(batch) >= 4 * bs:
                        yield from finish(batch)
                        batch, n_run = [], 0
                if broken:
                    _annotate(broken[0], "input_index", taken, f"raised at input {taken} (0-based); every "
                              "input before it has its result")
                    raise broken[0]
            finally:
                for _, f, _, _ in pending:
                    f.cancel()


def _annotate(exc: BaseException, name: str, value: Any, note: str) -> None:
    """Attach ``value`` to ``exc`` as ``name`` and, on Python 3.11+, a note for its traceback."""
    with contextlib.suppress(AttributeError, TypeError):  # an exception type without a __dict__
        setattr(exc, name, value)
    if hasattr(exc, "add_note"):
        exc.add_note(f"uopsl: {note}")


def _one_line(exc: BaseException, source: str) -> str:
    msg = " ".join(str(exc).split())
    prefix = f"{source}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg
