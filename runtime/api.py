"""The Python API for device makers: ``Screener``.

::

    from uopsl.runtime.api import Screener

    with Screener("bundle/", backend="auto") as s:
        r = s.screen("photo.jpg")            # a path, image bytes or an RGB uint8 array
        print(r.status, r.refer, r.probs, r.reasons)
        for r in s.screen_many(["a.jpg", "b.png"]):
            ...

``Screener.screen_to(out_dir, inputs)`` is what ``uopsl-screen run`` does:
results.jsonl/csv, thumbnails, overlays and the report, resuming a killed run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uopsl.runtime.backends import Selection, open_backend
from uopsl.runtime.backends.base import Backend
from uopsl.runtime.bundle import Manifest, read_manifest, verify_or_raise
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.overlay import write_overlay, write_thumbnail
from uopsl.runtime.pipeline import InputItem, PipelineConfig, ScreeningPipeline, ScreenResult, as_items, iter_inputs
from uopsl.runtime.report import write_report
from uopsl.runtime.results import CSV, ResultStore, write_csv

log = logging.getLogger(__name__)

#: thumbnail side kept for the report, and for overlays (which are viewed larger)
REPORT_THUMB_SIDE = 192
OVERLAY_SIDE = 384


@dataclass
class RunSummary:
    """What one ``screen_to`` call did; ``exit_code`` follows the CLI convention (0 all ok, 1 some not).

    ``counts`` and ``refer`` cover every input of the call, those screened now
    (``screened``) and those an earlier run of the same folder already had
    (``skipped``), so a resumed run reports the whole set.
    """

    out_dir: Path
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "ungradable": 0, "error": 0})
    screened: int = 0
    skipped: int = 0
    refer: int = 0
    backend: str = ""

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def exit_code(self) -> int:
        return 0 if self.counts.get("ungradable", 0) == 0 and self.counts.get("error", 0) == 0 else 1


class Screener:
    """Screen fundus photographs with a bundle: a context manager owning the backend.

    backend / precision / threads: see :func:`uopsl.runtime.backends.open_backend`.
    batch_size, workers: see :class:`PipelineConfig`. verify: check the bundle's
    checksums before loading (a few hundred ms for a typical bundle).
    """

    def __init__(
        self,
        bundle: str | os.PathLike[str],
        backend: str = "auto",
        *,
        precision: str = "auto",
        threads: int | None = None,
        batch_size: int = 8,
        workers: int | None = None,
        verify: bool = True,
        quality_config: Any = None,
        infer_ungradable: bool = False,
    ) -> None:
        self.bundle = Path(bundle)
        self.manifest: Manifest = verify_or_raise(self.bundle) if verify else read_manifest(self.bundle)
        self.backend_name = backend
        self.precision = precision
        self.threads = threads
        self.config = PipelineConfig(batch_size=batch_size, workers=workers, infer_ungradable=infer_ungradable)
        self.quality_config = quality_config
        self._backend: Backend | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Screener:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        if self._backend is None:
            # No spin-waiting: the pipeline's decoding threads share the cores with inference
            # (2-core x86, ResNet-18 INT8 on ONNX Runtime: ~10 % more photographs per second).
            b = open_backend(self.bundle, self.backend_name, self.precision, self.threads, manifest=self.manifest,
                             spin=False)
            b.__enter__()
            self._backend = b

    def close(self) -> None:
        if self._backend is not None:
            b, self._backend = self._backend, None
            b.__exit__(None, None, None)

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise ConfigError("the Screener is not open; use 'with Screener(...) as s:' or call open()")
        return self._backend

    @property
    def selection(self) -> Selection | None:
        """Which backend was chosen and why."""
        return None if self._backend is None else self._backend.selection

    def _pipeline(self, thumbnail_side: int = 0) -> ScreeningPipeline:
        cfg = PipelineConfig(self.config.batch_size, self.config.workers, self.config.prefetch_batches,
                             thumbnail_side, self.config.infer_ungradable)
        return ScreeningPipeline(self.backend, self.manifest, cfg, self.quality_config)

    # -- screening ---------------------------------------------------------------------------
    def screen(self, image: Any) -> ScreenResult:
        """Screen one image: a path, encoded bytes, or an RGB uint8 (H, W, 3) array.

        Paths and bytes of a JPEG at least twice the model size across may be
        decoded at 1/2-1/8 scale by libjpeg (``PreprocessConfig.fast_decode``),
        as in training; an array decoded elsewhere at full size then gives a
        model input a grey level or two apart, and probabilities that can
        differ in the second decimal. Pass the file when it must match.
        """
        items = list(as_items([image]))
        if len(items) != 1:
            raise ConfigError(f"screen() takes one image; {image!r} expanded to {len(items)} inputs (use screen_many)")
        return next(self._pipeline().run(items))

    def screen_many(self, images: Iterable[Any], *, thumbnail_side: int = 0) -> Iterator[ScreenResult]:
        """Screen many images (paths, folders, list files, bytes, arrays), streaming, in input order."""
        return self._pipeline(thumbnail_side).run(images)

    def screen_to(
        self,
        out_dir: str | os.PathLike[str],
        inputs: Iterable[str | os.PathLike[str]] | Iterable[InputItem],
        *,
        overlays: bool = False,
        report: bool = True,
        progress: bool = False,
        on_result: Callable[[ScreenResult], None] | None = None,
        finalize: bool = True,
    ) -> RunSummary:
        """Screen ``inputs`` into ``out_dir`` (results.jsonl/csv, thumbs/, overlays/, report.html).

        Inputs already in ``out_dir/results.jsonl`` (same path, size and mtime)
        are skipped; rows are appended and fsync'ed per batch, so a killed run
        resumes where it stopped. CSV and report are rewritten at the end.
        """
        out = Path(out_dir)
        summary = RunSummary(out, backend=self.backend.describe())
        side = OVERLAY_SIDE if overlays else REPORT_THUMB_SIDE if report else 0
        with ResultStore(out) as store:
            seen: set[str] = set()

            def todo() -> Iterator[InputItem]:
                for x in inputs:
                    for it in [x] if isinstance(x, InputItem) else iter_inputs([x]):
                        yield from _skip_done(it)

            def _skip_done(it: InputItem) -> Iterator[InputItem]:
                if it.key in seen:
                    return
                seen.add(it.key)
                if it.key in store.done:
                    status = store.done[it.key]
                    summary.skipped += 1
                    summary.counts[status] = summary.counts.get(status, 0) + 1
                    summary.refer += it.key in store.referred  # decided by the earlier run
                    if bar is not None:
                        bar.update(1)
                    return
                yield it

            bar = _progress(_count(inputs) if progress else None, progress)
            buffer: list[dict[str, Any]] = []
            try:
                for r in self._pipeline(side).run(todo()):
                    self._write_images(out, r, overlays, report)
                    buffer.append(r.to_row())
                    summary.screened += 1
                    summary.counts[r.status] = summary.counts.get(r.status, 0) + 1
                    summary.refer += bool(r.refer)
                    if on_result is not None:
                        on_result(r)
                    if len(buffer) >= self.config.batch_size:
                        store.append(buffer)
                        buffer = []
                    if bar is not None:
                        bar.update(1)
            finally:
                store.append(buffer)
                if bar is not None:
                    bar.close()
            if finalize:
                self.finalize(out, store, report=report)
        log.info("screened %d new, skipped %d already done: %s", summary.screened, summary.skipped,
                 ", ".join(f"{k} {v}" for k, v in summary.counts.items()))
        return summary

    def finalize(self, out: Path, store: ResultStore, *, report: bool = True) -> None:
        """Regenerate results.csv (and report.html) atomically from the jsonl."""
        rows = store.latest_rows()
        write_csv(out / CSV, rows, self.manifest.class_names)
        if report:
            write_report(rows, out, self.manifest, {"backend": self.backend.describe()})

    def _write_images(self, out: Path, r: ScreenResult, overlays: bool, report: bool) -> None:
        if r.thumbnail is None:
            return
        if report:
            write_thumbnail(out, r.id, r.thumbnail)
        if overlays and r.site_maps is not None and r.geometry is not None and r.status == "ok":
            heat = r.heatmap(shape=r.thumbnail.shape[:2])
            write_overlay(out, r.id, r.thumbnail, heat)


def _count(inputs: Iterable[Any]) -> int | None:
    if not isinstance(inputs, (list, tuple)):
        return None
    return sum(1 if isinstance(x, InputItem) else sum(1 for _ in iter_inputs([x])) for x in inputs)


def _progress(total: int | None, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        log.debug("tqdm not installed; no progress bar")
        return None
    return tqdm(total=total, unit="img", desc="screening", dynamic_ncols=True, leave=True)
