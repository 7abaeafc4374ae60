"""The Python API for device makers: ``Screener``.

::

    from uopsl.runtime.api import Screener

    with Screener("bundle/", backend="auto") as s:
        r = s.screen("photo.jpg")            # a path, image bytes or an RGB uint8 array
        print(r.status, r.refer, r.probs, r.reasons)
        for r in s.screen_many(["a.jpg", "b.png"]):
            ...

``Screener.screen_to(out_dir, inputs)`` is what ``uopsl-screen run`` does:
results.jsonl/csv, thumbnails, the report and (``overlays=True``; ``run``'s
default) overlays, resuming a killed run.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import numbers
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from uopsl.runtime.backends import (
    BACKEND_NAMES,
    PRECISIONS,
    Selection,
    auto_needs_pass,
    open_and_enter,
    validated_file,
)
from uopsl.runtime.backends.base import Backend, check_gpu_index
from uopsl.runtime.bundle import REFERS_NO_ONE, Manifest, parity_status, read_manifest
from uopsl.runtime.errors import (
    BackendClosedError,
    BackendError,
    BundleError,
    ConfigError,
    EngineMismatchError,
    ImageError,
    MissingDependencyError,
    ScreenerClosedError,
    UopslError,
)
from uopsl.runtime.intended_use import IntendedUse
from uopsl.runtime.signing import (
    SignatureCheck,
    key_paths,
    open_trusted,
    recheck_signature,
    trust_state,
    with_signed_parity,
)
from uopsl.runtime import progress as progress_bars
from uopsl.runtime.overlay import OVERLAY_DIR, THUMB_DIR, write_overlay, write_thumbnail
from uopsl.runtime.image_suffixes import IMAGE_SUFFIXES
from uopsl.runtime.input_keys import key_path
from uopsl.runtime.inputs import (
    IMAGE_DATA,
    LIST_SUFFIXES,
    ImageInput,
    InputItem,
    WalkState,
    as_items,
    check_inputs,
    check_output_placement,
    display_path,
    iter_inputs,
    one_or_many,
    refuse_empty_path,
)
from uopsl.runtime.pipeline import InferenceHealth, PipelineConfig, ScreeningPipeline, ScreenResult
from uopsl.runtime.preprocess import PREPROCESS_VERSION
from uopsl.runtime.quality import QualityConfig
from uopsl.runtime.report_days import write_reports
from uopsl.runtime.results import (CSV, CSV_STYLES, JSONL, ModelIdentity, ResultStore, model_identity, valid_image_id,
                                   write_csv)
from uopsl.runtime.stopping import interrupts_deferred, saving_outputs

log = logging.getLogger(__name__)

# What a device's code imports: the Screener, its results, and every error it may catch around one.
__all__ = ["BackendClosedError", "BackendError", "BundleError", "ConfigError", "EngineMismatchError", "ImageError",
           "MissingDependencyError", "RunSummary", "Screener", "ScreenerClosedError", "ScreeningInterrupted",
           "UopslError"]

#: thumbnail side kept for the report, and for overlays (which are viewed larger)
REPORT_THUMB_SIDE = 192
OVERLAY_SIDE = 384


#: how many earlier-run failures a :class:`RunSummary` keeps by name (the report lists every one)
EARLIER_FAILED_KEPT = 20


@dataclass
class RunSummary:
    """What one ``screen_to`` call did; ``exit_code`` follows the CLI convention (0 all ok, 1 some not).

    ``counts`` and ``refer`` cover every input of the call, those screened now
    (``screened``) and those an earlier run of the same folder already had
    (``skipped``), so a resumed run reports the whole set. ``in_folder`` is
    how many photographs the folder's CSV and report list, ``other_inputs``
    how many of those came from earlier runs for other inputs.
    ``skipped_files`` counts files the folder walk did not take, per suffix;
    ``excluded`` names output folders found among the inputs and left out.
    """

    out_dir: Path
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "ungradable": 0, "error": 0})
    screened: int = 0
    skipped: int = 0
    refer: int = 0
    backend: str = ""
    bundle_sha256: str = ""
    in_folder: int = 0
    other_inputs: int = 0
    moved: int = 0
    skipped_files: dict[str, int] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    interrupted: bool = False
    #: outputs that could not be rewritten because another program holds them open (Excel on results.csv)
    not_updated: tuple[str, ...] = ()
    #: (path, status, reasons) of inputs whose row from an earlier run is ungradable or unreadable, the first
    #: :data:`EARLIER_FAILED_KEPT` of them: a rerun names what still needs a retake, not only what it screened
    earlier_failed: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    #: ungradable rows (among ``counts``) whose file was replaced by another photograph under the same name on
    #: the same day (``watch``: the retake saved where the failed one was): kept as rows, no longer to retake
    retaken: int = 0

    @property
    def to_retake(self) -> int:
        """Photographs still without a result: ungradable or unreadable, less those retaken under their name."""
        return max(0, self.counts.get("ungradable", 0) + self.counts.get("error", 0) - self.retaken)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def exit_code(self) -> int:
        return 0 if self.to_retake == 0 else 1


class ScreeningInterrupted(KeyboardInterrupt):
    """Ctrl-C during :meth:`Screener.screen_to`, after the results so far were saved (CSV and report too).

    A :class:`KeyboardInterrupt`, so code that stops on Ctrl-C still stops;
    its message says how far the run got and that rerunning continues, and
    ``summary`` holds the counts.
    """

    def __init__(self, message: str, summary: RunSummary) -> None:
        super().__init__(message)
        self.summary = summary


def _refuse_in_memory(inputs: Iterable[Any]) -> None:
    """screen_to takes paths and InputItems: raw image bytes or arrays (which a path walk would choke on) are a
    ConfigError that says how to pass them."""
    for x in inputs:
        if isinstance(x, IMAGE_DATA):
            raise ConfigError("screen_to screens paths, folders, list files and InputItems; wrap image bytes or an "
                              "array with uopsl.runtime.inputs.item_for_data(data, name), or use screen() or "
                              "screen_many()")


def _say_missing_pictures(out: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Warn when rows of earlier runs lost the thumbnail or heatmap they were written with.

    Why: thumbs/ and overlays/ are most of a results folder, so they are what is deleted to free space; a
    rerun then skipped the photographs as done and wrote a report without pictures, silently (a review).
    The pictures are not made again here: the heatmaps need the model's outputs, which rows do not keep.
    """
    pictures = (("thumb", THUMB_DIR, ".jpg"), ("overlay", OVERLAY_DIR, ".png"))
    missing = sum(1 for r in rows for kind, folder, ext in pictures
                  if r.get(f"{kind}_id") and valid_image_id(r.get("id"))
                  and not os.path.lexists(out / folder / f"{r['id']}{ext}"))
    if missing:
        log.warning("%d thumbnail(s) or heatmap(s) of photographs screened earlier are no longer in %s (deleted to "
                    "free space?): the report shows none for them; to make them again, screen those photographs "
                    "into a new --out", missing, out)


class Screener:
    """Screen fundus photographs with a bundle: a context manager owning the backend.

    backend / precision / threads: see :func:`uopsl.runtime.backends.open_backend`.
    batch_size, workers, worker_pool: see :class:`PipelineConfig`. verify: check the bundle's
    checksums before loading (a few hundred ms for a typical bundle).
    quality_config: a :class:`uopsl.runtime.quality.QualityConfig` replacing the gradability
    gate's defaults (None: the defaults). infer_ungradable: run the model on ungradable
    photographs too (their rows keep the ungradable status; the probabilities are recorded for
    information, and no decision is made).
    csv_style: ``"comma"`` or ``"semicolon"``, the layout of the results.csv :meth:`screen_to` writes.
    max_inference_failures: see below. device: the GPU index (as ``nvidia-smi`` numbers
    them) for TensorRT and ONNX Runtime CUDA/TensorRT; engines are checked against that GPU.
    trusted_keys: PEM public-key files of bundle makers to trust, added to those this
    machine trusts anyway (its trusted-keys folder and ``UOPSL_TRUSTED_KEYS``,
    :func:`uopsl.runtime.signing.trusted_keys_for`); with any key, the bundle must carry a
    valid signature by one of them covering it as it is, or construction raises
    :class:`~uopsl.runtime.errors.BundleError`.

    Errors (all :class:`~uopsl.runtime.errors.UopslError`, each message says
    what to do):

    * construction raises :class:`~uopsl.runtime.errors.BundleError` for a
      missing, malformed or tampered bundle (``verify``), and
      :class:`~uopsl.runtime.errors.ConfigError` for a bad parameter;
    * :meth:`open` (``with``) raises :class:`~uopsl.runtime.errors.BundleError`
      when no file fits the backend asked for,
      :class:`~uopsl.runtime.errors.EngineMismatchError` (a BundleError) when
      ``backend="tensorrt"`` finds only engines built for another TensorRT
      version, GPU, platform or model file (rebuild them with ``uopsl build-engine``),
      :class:`~uopsl.runtime.errors.MissingDependencyError` when the backend asked
      for is not installed, and
      :class:`~uopsl.runtime.errors.BackendError` when the model cannot load or,
      with ``backend="auto"``, no installed backend can run the bundle
      (an unknown backend or precision is a construction-time ConfigError);
    * :meth:`screen`, :meth:`screen_many` and :meth:`screen_to` never raise for
      a bad photograph or a failed inference: the result has
      ``status="error"`` and its ``reasons`` say why (``unreadable``,
      ``undecodable``, ``inference_error``, ...). Only when inference fails
      ``max_inference_failures`` times in a row (a backend stuck in a failed
      state, e.g. after a GPU fault) do they raise
      :class:`~uopsl.runtime.errors.BackendError`: close the Screener and open
      a new one. They raise :class:`~uopsl.runtime.errors.ConfigError` for a
      path that does not exist and is not named like a photograph (a
      mistyped folder) and for an array of another dtype or shape than uint8
      (H, W, 3) RGB or (H, W); a missing ``x.jpg`` gets its error row. Arrays
      are copied when taken: a buffer refilled for every frame is safe.
      :meth:`screen_to` also raises :class:`~uopsl.runtime.errors.ConfigError`
      for an output folder it cannot use (not writable, locked by another
      process, written by another model) and for inputs holding no
      photograph, and :class:`ScreeningInterrupted` on Ctrl-C (after saving).

    Use one Screener per thread: a shared one serialises its inference calls
    (slow, never mixing results up). A call on a Screener that another thread
    closes raises :class:`~uopsl.runtime.errors.BackendClosedError` whether the
    close came before the call or during its inference (before it: the subclass
    :class:`~uopsl.runtime.errors.ScreenerClosedError`, also a ``ConfigError``
    as in earlier versions). It runs the bundle as it was when it was
    made: a bundle updated on disk takes effect in a new Screener.
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
        worker_pool: str = "threads",
        verify: bool = True,
        quality_config: Any = None,
        infer_ungradable: bool = False,
        max_inference_failures: int = 3,
        device: int = 0,
        csv_style: str = "comma",
        trusted_keys: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    ) -> None:
        if csv_style not in CSV_STYLES:
            raise ConfigError(f"csv_style must be one of {', '.join(CSV_STYLES)}, got {csv_style!r}")
        self.csv_style = csv_style
        self.device = check_gpu_index(device)
        if not isinstance(bundle, (str, os.PathLike)):
            raise ConfigError(f"bundle must be the path of a bundle folder (str or os.PathLike), got "
                              f"{type(bundle).__name__} {bundle!r}; pass the folder uopsl export wrote")
        self.bundle = Path(bundle)
        # Plain names, checked before the bundle's files are hashed (they were refused only at open()).
        if backend != "auto" and backend not in BACKEND_NAMES:
            raise ConfigError(f"unknown backend {backend!r}; expected 'auto' or one of {', '.join(BACKEND_NAMES)}")
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        # A device that trusts its maker's keys screens only with bundles that maker signed (runtime/signing.py);
        # the checksums and the signature are checked on one read of the manifest, the one used from here on.
        self.manifest: Manifest
        #: what the bundle's signature check found (None: this machine trusts no key, nothing checked)
        self.signature: SignatureCheck | None
        # Read once, as absolute paths: a one-shot iterable (a glob) must not be used up by the first of the
        # reads below, and a later chdir must not move the files the re-checks read (a review).
        keys_given = key_paths(trusted_keys)
        self._trusted_keys = keys_given
        self._trust_state = trust_state(keys_given)  # before reading them: a change meanwhile is seen later
        self._trust_checked = time.monotonic()
        self._untrusted = False
        self.manifest, self.signature = open_trusted(self.bundle, verify=verify, trusted_keys=keys_given)
        if self.signature is not None:
            log.info("%s: %s", self.bundle, self.signature.describe())
        self.verified = verify  # the report says when the checksums were not checked
        caution = self.manifest.intended_use.warning()
        if caution:  # every report says it too; a caller of the API may show no report
            log.warning("%s: %s", self.bundle, caution)
        if self.manifest.refers_no_one:  # the report says it too
            log.warning("%s: %s", self.bundle, REFERS_NO_ONE)
        self.busy_outputs: tuple[str, ...] = ()  # see finalize
        if not verify:
            log.warning("%s: bundle checksums NOT verified (--no-verify; verify=False in the Python API), except the "
                        "model file's as it loads; the report will say so", self.bundle)
        self.identity: ModelIdentity = replace(model_identity(self.bundle, self.manifest),
                                               preprocess_version=PREPROCESS_VERSION)
        self.backend_name = backend
        self.precision = precision
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral)
                                    or threads < 1):
            raise ConfigError(f"threads must be an integer >= 1 (or None: the runtime's default), got {threads!r}")
        self.threads = None if threads is None else int(threads)
        self.config = PipelineConfig(batch_size=batch_size, workers=workers, infer_ungradable=infer_ungradable,
                                     max_inference_failures=max_inference_failures, worker_pool=worker_pool)
        if quality_config is not None and not isinstance(quality_config, QualityConfig):
            raise ConfigError(f"quality_config must be a uopsl.runtime.quality.QualityConfig or None (the "
                              f"gate's defaults), got {type(quality_config).__name__} {quality_config!r}; e.g. "
                              "QualityConfig(min_brightness=15.0)")
        self.quality_config = quality_config
        self._backend: Backend | None = None
        self._closed = False  # closed after it was open: said so, since a shared Screener is closed elsewhere
        self._depth = 0  # nested `with` blocks open on this Screener
        self._health = InferenceHealth(max_inference_failures)

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Screener:
        self.open()
        self._depth += 1  # a nested `with` on the same Screener leaves the outer one open
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth <= 0:
            self._depth = 0
            self.close()

    def open(self) -> None:
        if self._backend is None:
            self.recheck_trust()  # keys or lists may have changed since the bundle was read
            self._refuse_changed_bundle()
            # No spin-waiting: the pipeline's decoding threads share the cores with inference
            # (2-core x86, ResNet-18 INT8 on ONNX Runtime: ~10 % more photographs per second).
            b = open_and_enter(self.bundle, self.backend_name, self.precision, self.threads, manifest=self.manifest,
                               spin=False, device=self.device, batch=self.config.batch_size)
            self._backend = b
            self._closed = False
            self._health = InferenceHealth(self.config.max_inference_failures)

    def _refuse_changed_bundle(self) -> None:
        """A bundle updated on disk since this Screener read it: say so, and that a new Screener runs it (its
        changed model file read "replaced or damaged ...: copy the bundle again", wrong advice after an update)."""
        try:
            now = read_manifest(self.bundle).content_sha256
        except (UopslError, OSError):
            return  # gone or unreadable: opening says what is wrong with it
        if now and self.manifest.content_sha256 and now != self.manifest.content_sha256:
            raise BundleError(f"{self.bundle} changed since this Screener read it (a bundle update?): make a new "
                              "Screener to run the bundle as it is now")

    def close(self) -> None:
        if self._backend is not None:
            b, self._backend = self._backend, None
            self._closed = True
            b.__exit__(None, None, None)

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            if self._closed:
                raise ScreenerClosedError("the Screener was closed (its 'with' block ended, or close() was "
                                          "called, perhaps by another thread sharing it); open it again with "
                                          "open() or a new 'with Screener(...) as s:'")
            raise ConfigError("the Screener is not open; use 'with Screener(...) as s:' or call open()")
        return self._backend

    @property
    def intended_use(self) -> IntendedUse:
        """What the bundle's maker states the model may be used for; ``.for_patients`` is True only for
        ``clinical``, and ``.warning()`` is the caution to show with every result otherwise."""
        return self.manifest.intended_use

    @property
    def selection(self) -> Selection | None:
        """Which backend was chosen and why."""
        return None if self._backend is None else self._backend.selection

    #: Seconds between the re-checks :meth:`_recheck_trust_now_and_then` makes before batches (a trusted-keys
    #: folder on a slow or hung network share must not stall every batch).
    TRUST_RECHECK_S = 2.0

    def recheck_trust(self) -> None:
        """Raise :class:`BundleError` if this machine's signing keys or revocation lists changed since the bundle
        was opened and no longer trust it (a recall published while a service runs); a few stat calls when
        nothing changed. Screening calls it before batches, at most every :attr:`TRUST_RECHECK_S` seconds."""
        now = trust_state(self._trusted_keys)
        self._trust_checked = time.monotonic()
        if now == self._trust_state:
            return
        try:
            check = recheck_signature(self.bundle, self.manifest, self.signature, self._trusted_keys)
            view = self.manifest
            if check is not None and self.signature is None:
                # Opened while this machine trusted no key: from now on only the parity records the signature
                # covers count, and the file already chosen must still be one auto would choose.
                view = with_signed_parity(self.manifest, check.signed_parity)
                problem = self._choice_problem(view)
                if problem:
                    raise BundleError(f"{self.bundle}: this machine now requires signed bundles, and {problem}; "
                                      "make a new Screener for it")
                self._revalidate_selection(view)
        except UopslError:
            self._untrusted = True  # judged again at every batch until keys and lists trust it again
            raise
        self.manifest = view
        self.signature = check
        self._untrusted = False
        self._trust_state = now

    def _choice_problem(self, view: Manifest) -> str:
        """Why the file this open Screener runs would not be chosen under ``view`` ("" when it would, or when no
        parity record decided it: FP32, a precision asked for by name, a Screener not open yet)."""
        b = self._backend
        sel = getattr(b, "selection", None) if b is not None else None
        if sel is None or not auto_needs_pass(sel.precision) or self.precision != "auto":
            return ""
        ok, why = parity_status(view.file(sel.file), sel.backend, manifest=view)
        return "" if ok else f"{sel.file} on {sel.backend} was chosen by parity records it does not sign ({why})"

    def _revalidate_selection(self, view: Manifest) -> None:
        """Keep ``selection.validated`` true to ``view`` (the signed records, once this machine requires them):
        a reduced-precision file asked for by name keeps running, and says when its PASS no longer counts."""
        b = self._backend
        sel = getattr(b, "selection", None) if b is not None else None
        if sel is None or sel.validated is None:
            return
        ok, why = validated_file(self.bundle, view.file(sel.file), sel.backend, view)
        if ok != sel.validated:
            if not ok:
                how = ("it was asked for by name" if self.precision != "auto" else
                       f"auto chooses {sel.precision} files without a parity record")
                log.warning("%s on %s is no longer a validated file on this machine, which now requires signed "
                            "bundles: %s; it keeps running because %s", sel.file, sel.backend, why, how)
            note = f"{sel.reason}; validated: {ok} under the signed records"
            b.selection = replace(sel, validated=ok, reason=note)  # type: ignore[union-attr]

    def _recheck_trust_now_and_then(self) -> None:
        if self._untrusted or time.monotonic() - self._trust_checked >= self.TRUST_RECHECK_S:
            self.recheck_trust()

    def _pipeline(self, thumbnail_side: int = 0) -> ScreeningPipeline:
        cfg = replace(self.config, thumbnail_side=thumbnail_side)
        return ScreeningPipeline(self.backend, self.manifest, cfg, self.quality_config, self._health,
                                 before_batch=self._recheck_trust_now_and_then)

    def _small_count(self, given: list[Any] | None) -> int | None:
        """At most how many photographs ``given`` names, where ``worker_pool="auto"`` can use it to prepare a
        small run in threads (:meth:`PipelineConfig.pool_for`) and it is known without walking a folder or
        reading a list file; None otherwise (a stream, a folder, or too many inputs to be small anyway)."""
        if self.config.worker_pool != "auto" or given is None or len(given) >= self.config.small_run_limit():
            return None
        if any(not isinstance(x, InputItem) and _names_many(Path(x)) for x in given):
            return None
        return len(given)

    def check_output(self, out_dir: str | os.PathLike[str], inputs: Iterable[Any] | None = None) -> None:
        """Raise :class:`ConfigError` now if ``screen_to(out_dir, inputs)`` could not write there.

        Checks what :meth:`screen_to` checks first (the inputs exist, the
        folder does not hold them, it can be created and written, no other
        process holds it, it holds no other model's results) without loading
        the model, so a command line can fail in a second instead of after the
        model (on a Jetson: a TensorRT engine) loaded. Writes nothing: a
        folder it had to create is removed again, and ``run.json`` is left as
        it is until the screening writes rows.
        """
        if inputs is not None:
            given = list(one_or_many(inputs))
            _refuse_in_memory(given)
            check_inputs(given)
            check_output_placement(out_dir, given)
        ResultStore(out_dir, self.identity, check_only=True).close()

    # -- screening ---------------------------------------------------------------------------
    def screen(self, image: ImageInput) -> ScreenResult:
        """Screen one image: a path, encoded bytes, or an RGB uint8 (H, W, 3) array.

        Paths and bytes of a JPEG larger than the model size may be decoded at
        1/2-1/8 scale by libjpeg (``PreprocessConfig.fast_decode``, ``decode_min_ratio``),
        as in training and ``uopsl validate``; an array decoded elsewhere at full
        size gives a model input about half a grey level apart (TVHL), and a
        sensitive model can then call some findings differently (the demo's
        model, on real photographs it never saw in training, moved by up to 0.61
        in probability; ``benchmarks/compare_array_inputs.py``). Pass the file, or
        the camera's JPEG bytes, which give exactly the file's result. An array must
        be uint8 RGB: one in BGR order (``cv2.imread``) mostly comes back ungradable
        (``not_fundus_colour``), but not always (3 of 100 TVHL photographs came back
        ``ok``, with findings): convert it. Another dtype or shape raises
        :class:`~uopsl.runtime.errors.ConfigError`.
        """
        refuse_empty_path(image)
        if isinstance(image, (str, os.PathLike)) and _names_many(Path(image)):
            raise ConfigError(f"screen() takes one image; {display_path(image)} is a "
                              f"{'folder' if os.path.isdir(image) else 'list file'} (use screen_many)")
        items = list(as_items([image], single=True))
        if len(items) != 1:
            raise ConfigError(f"screen() takes one image; {image!r} expanded to {len(items)} inputs (use screen_many)")
        return next(self._pipeline().run(items, count=1))

    def screen_many(self, images: Iterable[ImageInput], *, thumbnail_side: int = 0) -> Iterator[ScreenResult]:
        """Screen many images (paths, folders, list files, bytes, arrays), streaming, in input order.

        thumbnail_side: also keep a downscaled RGB copy of each original as ``result.thumbnail``
        (longest side in px, for a report or a viewer; 0: none).

        It takes ``4 x batch_size`` inputs with worker threads (32 by default; worker processes read at
        least 4 per worker besides; more when many are
        ungradable) before the first result is yielded (decoding overlaps inference); a source that produces its next photograph only after the
        previous result was seen (a live camera loop) should call :meth:`screen` per photograph instead.
        Closing the Screener while the iterator is in use ends it with :class:`BackendClosedError`.

        While the returned iterator is unfinished, OpenCV runs single-threaded in the whole process
        (:func:`uopsl.runtime.pipeline.opencv_single_threaded`); its setting comes back when the
        iterator is exhausted or closed, so close one you abandon (``it.close()``).

        A list or tuple is checked whole when this is called: a path in it that does not exist and is not named
        like a photograph (a mistyped folder) raises :class:`ConfigError` before anything is screened, as
        :meth:`screen_to` does; any other iterable is read lazily, so that error comes when the path is reached.
        """
        if isinstance(images, (list, tuple)):
            # A review: one mistyped folder in a list ended the stream after the rows before it, and the
            # photographs after it were never screened.
            check_inputs(images)
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
        require_images: bool = True,
        store: ResultStore | None = None,
        keep: Callable[[ScreenResult], bool] | None = None,
        on_kept: Callable[[dict[str, Any]], None] | None = None,
        on_done: Callable[[dict[str, Any]], None] | None = None,
    ) -> RunSummary:
        """Screen ``inputs`` into ``out_dir`` (results.jsonl/csv, thumbs/, report.html; overlays/ with
        ``overlays=True``, which ``uopsl-screen run`` passes by default).

        Resuming: an input whose file version (resolved path, size, mtime) has
        a final row in ``out_dir/results.jsonl`` is skipped: ``ok``,
        ``ungradable``, or an error that is a property of the file's content
        (``undecodable``, ``unsupported_format``, ``too_small``, ``too_large``) while the file still holds
        the bytes it was screened from (a damaged file copied again with its time kept is screened again). Other failures
        (unreadable, inference failed), and rows screened under another preprocessing version
        (``PREPROCESS_VERSION``: an upgrade that decodes some files differently), are screened again. A photograph whose
        old path is gone but which is found, same size and content
        (sha256), under a new path (a card mounted elsewhere, a file renamed) gets its earlier
        result under the new path instead of a second screening. Rows are
        appended and fsync'ed per batch, so a killed run resumes where it
        stopped; CSV and report are rewritten at the end, also after Ctrl-C,
        which then raises :class:`ScreeningInterrupted`.

        Refuses (:class:`ConfigError`) a folder it cannot write, one another
        process is writing, one holding another model's results, or one whose results.csv lists photographs
        that results.jsonl lacks (the jsonl lost); stops with one when the folder of a photograph still to be
        read went away (a card taken out), and renames results.csv / report.html that could not be rewritten
        (``*.out-of-date.*``) so that an earlier list is not taken for this run's; missing
        top-level inputs; and, with ``require_images``, inputs holding no
        photograph at all. The output folder is never screened itself.

        ``store``: a :class:`ResultStore` already open on ``out_dir`` (``watch``
        holds one for its whole session), used instead of opening the folder
        again, which would read all of results.jsonl each time. It is left open.

        ``on_result``: called with each result once its row is saved (rows are saved per batch), so a verdict
        shown from it is one the results folder keeps, also when the disk fills.
        ``keep``: a result it returns False for gets no row and is not counted (``watch`` drops a
        photograph that was moved away between being found and being read: it is screened where it went).
        ``on_kept``: called with each earlier row carried over to an input (a card mounted elsewhere, file
        times moved) instead of a screening; ``watch`` counts a file once per session with it.
        ``on_done``: called for each input an earlier run already screened (``key``, ``status``, ``refer``,
        ``sha256``, and ``screened_at`` where the row has no result): ``watch`` tells a retake under the same
        name, and what it had not screened when stopped, with it.
        """
        out = Path(out_dir)
        inputs = one_or_many(inputs)  # one path is one input, not its characters
        given = list(inputs) if isinstance(inputs, (list, tuple)) else None
        _refuse_in_memory(given if given is not None else [])  # before the output folder exists
        if given is not None:
            check_inputs(given)
            check_output_placement(out, given)
        summary = RunSummary(out, backend=self.backend.describe(), bundle_sha256=self.identity.bundle_sha256)
        media = _input_folders(given)
        side = OVERLAY_SIDE if overlays else REPORT_THUMB_SIDE if report else 0
        if store is not None and os.path.realpath(out) != store._real:
            raise ConfigError(f"screen_to was given a ResultStore open on {store.out_dir}, but writes to {out}; "
                              "pass the store of that same output folder, or none")
        opened = contextlib.nullcontext(store) if store is not None else ResultStore(out, self.identity)
        with opened as store:
            again = 0 if store.said_earlier_versions else store.earlier_version_rows()
            store.said_earlier_versions = True  # watch reuses one store: count and say it once
            if again:
                log.warning("%s: %d photograph(s) were screened by an earlier uopsl that decoded some files "
                            "differently; each is screened again when it is among the inputs (the new row "
                            "replaces the old; start a new --out to keep the earlier results)", out, again)
            seen: set[str] = set()
            walk = WalkState(exclude=[out])
            source = given if given is not None else inputs

            def todo() -> Iterator[InputItem]:
                for x in source:
                    _refuse_in_memory([x])  # a generator's items are seen only here
                    for it in [x] if isinstance(x, InputItem) else iter_inputs([x], state=walk):
                        yield from _skip_done(it)

            def _skip_done(it: InputItem) -> Iterator[InputItem]:
                if it.key in seen:
                    return
                seen.add(it.key)
                if store.is_done(it.key):
                    status = store.done[it.key]
                    _count_earlier(status, it.key in store.referred)
                    if on_done is not None:
                        on_done({"key": it.key, "status": status, "refer": it.key in store.referred,
                                 "sha256": store.sha_of(it.key), "screened_at": store.failed_at(it.key)})
                    if status != "ok" and len(summary.earlier_failed) < EARLIER_FAILED_KEPT:
                        summary.earlier_failed.append((key_path(it.key) or it.key, status, store.reasons_of(it.key)))
                    return
                if it.path is not None and (same := store.find_retimed(it.key, it.path)) is not None:
                    # The same file under a new time: its result and images (not where it once came from).
                    row = {**{k: v for k, v in same.items() if k != "moved_from"}, "key": it.key}
                    store.defer(row)
                    _count_earlier(str(row.get("status")), bool(row.get("refer")))
                    if on_kept is not None:
                        on_kept(row)
                    return
                if it.path is not None:
                    old = store.find_moved(it.key, it.path)
                    if old is not None:
                        row = self._moved_row(out, old, it)
                        store.defer(row)  # written with the next batch: no fsync per photograph
                        summary.moved += 1
                        _count_earlier(str(row.get("status")), bool(row.get("refer")))
                        if on_kept is not None:
                            on_kept(row)
                        return
                yield it

            def _count_earlier(status: str, refer: bool) -> None:
                summary.skipped += 1
                summary.counts[status] = summary.counts.get(status, 0) + 1
                summary.refer += refer  # decided by the earlier run
                bar.update(1)

            show = progress and progress_bars.enabled()  # -q hides bars: then skip the counting walk too
            bar = progress_bars.bar(total=_count(given, out) if show and given is not None else None, desc="screening",
                                    unit="img", leave=True, show=show)
            buffer: list[dict[str, Any]] = []
            unsaid: list[ScreenResult] = []  # the results of ``buffer``: told to on_result once it is saved
            try:
                try:
                    model_file = self._model_file_columns()  # the same for every row of this run
                    # Per row, not per folder: a bundle restated after some rows keeps its results folder.
                    use_status = self.manifest.intended_use.status
                    for r in self._pipeline(side).run(todo(), count=self._small_count(given)):
                        if keep is not None and not keep(r):
                            bar.update(1)
                            continue
                        if keep is None and (gone := _folder_gone(r, media)) is not None:
                            raise ConfigError(
                                f"{gone} went away during the run (a memory card or USB stick taken out?) while "
                                f"{display_path(key_path(r.key))} was still to be read; the {summary.screened} "
                                f"photographs screened before are saved in {out}. Put it back and run the same "
                                "command again: what was screened is not screened again")
                        r = self._apart_from_earlier_photograph(store, r)
                        row = r.to_row()
                        row["screened_at"] = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
                        row["bundle_sha256"] = self.identity.bundle_sha256
                        row["model_sha256"] = self.identity.model_sha256
                        row["preprocess_version"] = self.identity.preprocess_version
                        row["intended_use"] = use_status
                        row.update(model_file)
                        if not buffer:  # once per batch, before its pictures: they would make a folder that went
                            store.check_in_place()  # again (a stat; per photograph it costs a round trip on SMB)
                        row.update(self._write_images(out, r, overlays, report))
                        buffer.append(row)
                        summary.screened += 1
                        summary.counts[r.status] = summary.counts.get(r.status, 0) + 1
                        summary.refer += bool(r.refer)
                        unsaid.append(r)
                        if len(buffer) >= self.config.batch_size:
                            # Counted as screened: a stop waits until they are saved. Handed over inside, so a stop
                            # before leaves them to the append below, and a failed write is not retried there.
                            with interrupts_deferred():  # told inside: a stop landing in the write
                                rows, buffer = buffer, []  # would otherwise leave saved rows untold
                                told, unsaid = unsaid, []
                                store.append(rows)
                                _tell(on_result, told)
                        bar.update(1)
                finally:
                    with interrupts_deferred():
                        rows, buffer = buffer, []
                        told, unsaid = unsaid, []
                        store.append(rows)
                        _tell(on_result, told)  # not reached when the write failed: nothing unsaved is shown
                    bar.close()
            except KeyboardInterrupt:
                summary.interrupted = True
            except Exception as exc:
                if finalize:  # what was done stays readable, and the report says the run did not end
                    self._finalize_quietly(out, store, report, given,
                                           incomplete=f"the run stopped on an error ({type(exc).__name__}: {exc})")
                raise
            summary.skipped_files = dict(walk.skipped)
            summary.excluded = list(walk.excluded)
            if walk.anything_skipped:
                log.warning("%s", walk.skipped_message())
            if summary.total == 0 and require_images and not summary.interrupted:
                named = ", ".join(display_path(x) for x in given or () if not isinstance(x, InputItem))
                raise ConfigError(
                    f"no photographs found in {named or 'the inputs'} (looked for "
                    f"{', '.join(sorted(IMAGE_SUFFIXES))}"
                    + (f"; {walk.skipped_message()}" if walk.anything_skipped else "")
                    + "): check the folder, or name the files"
                )
            expected: int | None = None
            if summary.interrupted:
                expected = _count_quietly(given, out)
            stopped = _stopped_text(summary, expected)  # None when every input was screened
            if finalize:
                try:
                    with stale_outputs_set_aside(out):
                        rows = self.finalize(out, store, report=report, inputs=given, incomplete=stopped)
                except KeyboardInterrupt:  # a stop landing as the rewrite began: it is what a stop asks for
                    summary.interrupted = True
                    log.warning("stopped while writing %s and the report: writing them once more", CSV)
                    try:
                        rows = self.finalize(out, store, report=report, inputs=given, incomplete=stopped)
                    except KeyboardInterrupt:
                        # A third Ctrl-C (pressed until it stops): the rows are safe in the jsonl, which every
                        # row is appended to as it is screened; the same command writes the rest.
                        raise ScreeningInterrupted(
                            f"stopped while writing {CSV} and the report: the {summary.screened + summary.skipped} "
                            f"photographs screened are saved in {out / JSONL}, but {CSV} or report.html may be "
                            "missing or out of date; run the same command again to finish them", summary) from None
                summary.not_updated = self.busy_outputs
                if summary.skipped:
                    _say_missing_pictures(out, rows)
                mine = {key_path(k) or k for k in seen}
                summary.in_folder = len(rows)
                summary.other_inputs = sum(1 for r in rows if (key_path(str(r.get("key", ""))) or r.get("key"))
                                           not in mine)
                if summary.other_inputs:
                    log.warning("%s lists %d photographs: %d from earlier runs into this folder for other inputs "
                                "(screen each session into its own --out to keep them apart)",
                                out, len(rows), summary.other_inputs)
        # A batch of `watch` (finalize off) has its own line per photograph: this one only at -vv there.
        log.log(logging.INFO if finalize else logging.DEBUG, "screened %d new, skipped %d already done: %s",
                summary.screened, summary.skipped, ", ".join(f"{k} {v}" for k, v in summary.counts.items()))
        if summary.interrupted:
            expected = _count_quietly(given, out) if expected is None else expected
            done = summary.screened + summary.skipped
            of = f" of {expected}" if expected is not None and expected >= done else ""
            raise ScreeningInterrupted(
                f"interrupted after {done}{of} photographs (saved in {out}"
                + (f"; {CSV}{' and report.html' if report else ''} list them" if finalize else "")
                + "); run the same command again to continue", summary)
        return summary

    def finalize(self, out: Path, store: ResultStore, *, report: bool = True,
                 inputs: Iterable[Any] | None = None, only_busy: bool = False,
                 incomplete: str | None = None) -> list[dict[str, Any]]:
        """Regenerate results.csv (and report.html) atomically from the jsonl; returns the rows they list.

        ``incomplete``: why the run that writes them did not screen every input (stopped, or failed); the
        report leads with it, so a printed page cannot pass for the whole session. The next complete run's
        report drops it.

        A file another program holds open (Excel on results.csv: Windows will not replace it) is left as it
        was and named in :attr:`busy_outputs`, once in the log; the other outputs are still written, and the
        rows are safe in results.jsonl. The next call tries again (``watch`` does at its next refresh).
        """
        with saving_outputs():  # a stop from outside (the console closed) waits for this instead of cutting it
            return self._finalize(out, store, report=report, inputs=inputs, only_busy=only_busy,
                                  incomplete=incomplete)

    def _finalize(self, out: Path, store: ResultStore, *, report: bool, inputs: Iterable[Any] | None,
                  only_busy: bool, incomplete: str | None = None) -> list[dict[str, Any]]:
        store.check_in_place()  # a folder that went: its rows are not here to list
        rows = store.latest_rows()
        busy: list[str] = []
        only = set(self.busy_outputs) if only_busy else None  # watch between new rows: the held files alone
        if only is None or str(out / CSV) in only:
            self._write_unless_busy(out / CSV, busy, lambda: write_csv(
                out / CSV, rows, self.manifest.class_names,
                referable=[c.name for c in self.manifest.classes if c.referable], style=self.csv_style))
        if report and (only is None or str(out / "report.html") in only):
            info: dict[str, Any] = {"backend": self.backend.describe(), "bundle_sha256": self.identity.bundle_sha256,
                                    "bundle_verified": self.verified}
            if self.signature is not None:  # checked against a trusted key when the Screener opened the bundle
                info["bundle_signature"] = f"signed by key {self.signature.key_id}, checked against a trusted key"
            if inputs is not None:
                info["inputs"] = [display_path(x) for x in inputs if isinstance(x, (str, os.PathLike))]
            if incomplete:
                info["incomplete"] = incomplete
            sel = self.selection
            if sel is not None and sel.validated is False:  # run on request, with a warning only on the console
                info["unvalidated_file"] = (f"{sel.file} ({sel.precision} on {sel.backend}) has not passed "
                                            "`uopsl validate` on this machine")
            self._write_unless_busy(out / "report.html", busy, lambda: write_reports(rows, out, self.manifest, info))
        done = set(self.busy_outputs) - set(busy) if only is None else only - set(busy)
        for name in sorted(done):
            log.info("%s updated again", name)
        self.busy_outputs = tuple(busy)
        return rows

    def _write_unless_busy(self, path: Path, busy: list[str], write: Callable[[], object]) -> None:
        if str(path) in self.busy_outputs and _held_open(path):  # still held: not a second of retries again
            busy.append(str(path))
            return
        try:
            write()
        except PermissionError as exc:
            if not path.exists():  # not a file held open: a folder without write permission, say
                raise
            busy.append(str(path))
            immutable = os.name != "nt" and exc.errno == errno.EPERM  # chattr +i; a file held open is EACCES
            if str(path) not in self.busy_outputs and not immutable:  # once per episode, not at every refresh
                log.warning("%s is open in another program (Excel?) and was not updated (%s); the results are safe "
                            "in %s. Close it: watch rewrites it at its next refresh, run rewrites it when run "
                            "again", path, exc.strerror or exc, JSONL)
            elif str(path) not in self.busy_outputs:
                log.warning("%s could not be replaced (%s: a read-only or immutable file?) and was not updated; the "
                            "results are safe in %s. Make it writable (chmod u+w; chattr -i): watch rewrites it at "
                            "its next refresh, run rewrites it when run again", path, exc.strerror or exc, JSONL)

    def _finalize_quietly(self, out: Path, store: ResultStore, report: bool, inputs: Iterable[Any] | None,
                          incomplete: str | None = None) -> None:
        if store.gone:  # nothing to rewrite: a fresh report there would list none of the rows
            return
        try:
            with stale_outputs_set_aside(out):
                self.finalize(out, store, report=report, inputs=inputs, incomplete=incomplete)
        except Exception as exc:  # noqa: BLE001 - the original failure is the one to report
            log.warning("could not rewrite results.csv/report.html after the failure: %s", exc)

    def _apart_from_earlier_photograph(self, store: ResultStore, r: ScreenResult) -> ScreenResult:
        """``r`` with an id of its own when its file held another photograph at an earlier screening.

        Ids follow the path; without this the new photograph's thumbnail and
        heatmap would overwrite those of the earlier patient's row, which stays listed.
        """
        if not r.content_sha256:
            return r
        old = store.replaced_photograph(key_path(r.key), r.content_sha256)
        if old is None:
            return r
        log.warning("%s holds another photograph than the one screened under this name at %s (%s); "
                    "both are listed", display_path(r.source), old.get("screened_at") or "an earlier run",
                    "referred" if old.get("refer") else str(old.get("status")))
        return replace(r, id=f"{r.id}-{r.content_sha256[:8]}")

    def _model_file_columns(self) -> dict[str, str]:
        """Which backend, precision and bundle file decided a row (one folder can hold runs of several)."""
        sel = self.selection
        return {} if sel is None else {"backend": sel.backend, "precision": sel.precision, "model_file": sel.file}

    def _moved_row(self, out: Path, old: dict[str, Any], it: InputItem) -> dict[str, Any]:
        """``old`` (the same photograph's row under a path that is gone) for its new path, images renamed."""
        row = {k: v for k, v in old.items() if k != "source_path"}
        shown = display_path(it.source)
        row.update(id=it.id, source=shown, key=it.key, moved_from=key_path(str(old.get("key", ""))))
        if shown != it.source:
            row["source_path"] = it.source
        for folder, ext in ((THUMB_DIR, ".jpg"), (OVERLAY_DIR, ".png")):
            src = out / folder / f"{old.get('id')}{ext}"
            with contextlib.suppress(OSError):
                if src.is_file():
                    os.replace(src, out / folder / f"{it.id}{ext}")
        log.info("%s: same photograph as %s (screened earlier, file no longer there); its result is kept",
                 shown, display_path(str(row["moved_from"])))
        return row

    def _write_images(self, out: Path, r: ScreenResult, overlays: bool, report: bool) -> dict[str, str]:
        """Write this row's thumbnail and overlay; delete those an earlier version of the file left.

        Ids follow the path, so a photograph replaced by an unreadable one
        would otherwise show the old picture (and heatmap) next to its new
        verdict. Returns the row's fields naming what was written
        (``thumb_id``, ``overlay_id``: :func:`~uopsl.runtime.overlay.content_id` of each
        file's content), by which the report knows its images without
        trusting file times (FAT drives shift them by an hour at a
        daylight-saving change; a file server stamps its own clock).
        """
        wrote_thumb = wrote_overlay = False
        written: dict[str, str] = {}
        if r.thumbnail is not None:
            if report:
                written["thumb_id"] = write_thumbnail(out, r.id, r.thumbnail)
                wrote_thumb = True
            if overlays and r.site_maps is not None and r.geometry is not None and r.status == "ok":
                heat = r.heatmap(shape=r.thumbnail.shape[:2])
                written["overlay_id"] = write_overlay(out, r.id, r.thumbnail, heat)
                wrote_overlay = True
        for wrote, stale in ((wrote_thumb, out / THUMB_DIR / f"{r.id}.jpg"),
                             (wrote_overlay, out / OVERLAY_DIR / f"{r.id}.png")):
            if not wrote:
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
        return written


def _names_many(p: Path) -> bool:
    """Whether the path ``p`` is a folder or a list file (inputs that name photographs, not one), without
    walking it: a one-photograph folder must not pass for that photograph."""
    return p.is_dir() or (p.suffix.lower() in LIST_SUFFIXES and p.is_file())


@contextlib.contextmanager
def stale_outputs_set_aside(out: Path) -> Iterator[None]:
    """On a failed rewrite, rename results.csv / report.html that were not rewritten to ``*.out-of-date.*``.

    Why: a full disk let the CSV through and not the report, which kept listing an earlier session's 30
    photographs, without the banner a stopped run's report carries: printed, it passed for the day's list
    while 9 screened patients were not on it. Renaming needs no free space; the rows are safe in the jsonl
    and the same command writes both files again.
    """
    names = (CSV, "report.html")  # day pages: report_days sets aside those it failed to rewrite
    before = {name: _version_of(out / name) for name in names}
    try:
        yield
    except Exception:
        for name, then in before.items():
            if then is None or _version_of(out / name) != then:
                continue  # absent, or rewritten by this attempt (a new file: written atomically)
            stale = out / _out_of_date(name)
            try:
                os.replace(out / name, stale)
            except OSError as exc:
                log.warning("%s is out of date (it could not be rewritten) and could not be renamed either (%s): "
                            "do not print it; run the same command again once the problem is fixed",
                            out / name, exc)
                continue
            log.warning("%s could not be rewritten: the earlier one, which does not list what %s holds now, was "
                        "renamed %s so that it is not taken for this session's list; run the same command again "
                        "once the problem is fixed to write it", out / name, JSONL, stale.name)
        raise
    for name in names:  # written now: a copy set aside by an earlier failure is no longer wanted
        stale = out / _out_of_date(name)
        if (out / name).exists() and stale.exists():
            try:
                stale.unlink()
                log.info("removed %s: %s was written again", stale, name)
            except OSError as exc:  # Windows: open in Excel. Everything was written: no reason to fail the run
                log.warning("could not remove %s, an out-of-date copy of %s (%s); delete it yourself",
                            stale, name, exc.strerror or exc)


def _out_of_date(name: str) -> str:
    return name.replace(".", ".out-of-date.", 1)


def _version_of(path: Path) -> tuple[int, int, int] | None:
    """Which file ``path`` is (inode, mtime, size): an atomic rewrite makes a new one, also where mtimes are
    coarse (FAT's 2 s)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _held_open(path: Path) -> bool:
    """Whether another program holds ``path`` so that it cannot be opened for writing (Windows: Excel)."""
    try:
        with open(path, "r+b"):
            return False
    except PermissionError:
        return True
    except OSError:
        return False


def _count(inputs: Iterable[Any] | None, out: Path) -> int | None:
    """How many distinct inputs ``inputs`` expands to (None for a stream, which cannot be counted ahead)."""
    if not isinstance(inputs, (list, tuple)):
        return None
    keys: set[str] = set()
    walk = WalkState(exclude=[out])
    for x in inputs:
        for it in [x] if isinstance(x, InputItem) else iter_inputs([x], state=walk):
            keys.add(it.key)
    return len(keys)


def _input_folders(given: Sequence[Any] | None) -> dict[str, tuple[str, int]]:
    """The folders named as inputs: real path -> (as named, device number), to tell a card taken out."""
    folders: dict[str, tuple[str, int]] = {}
    for g in given or ():
        if isinstance(g, (str, os.PathLike)):
            with contextlib.suppress(OSError, ValueError):
                if os.path.isdir(g):
                    folders[os.path.realpath(g)] = (display_path(g), os.stat(g).st_dev)
    return folders


def _folder_gone(r: ScreenResult, media: Mapping[str, tuple[str, int]]) -> str | None:
    """The input folder of an unreadable file when that folder is gone or is now another file system (a card or
    stick taken out; its mount point may stay as an empty folder), else None.

    Why: each file of a card taken out was recorded "cannot open file", a retake row per photograph, and those
    rows stayed after the card came back under another mount point. A file deleted, or a sub-folder moved away
    (camera software filing a session), while the input folder is still there keeps its row: the report must
    name a photograph that was lost.
    """
    if not media or r.status != "error" or "unreadable" not in r.reasons or r.key.endswith("|missing"):
        return None  # "|missing": no file there when the inputs were listed (a list naming a wrong path)
    path = key_path(r.key)
    if not path or os.path.lexists(path):
        return None
    for root, (named, device) in media.items():
        if not _under(path, root):
            continue
        try:
            if os.stat(root).st_dev == device:
                return None
        except OSError:
            pass  # gone
        return named
    return None


def _under(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # another drive (Windows), or a relative path against an absolute one
        return False


def _tell(on_result: Callable[[ScreenResult], None] | None, results: list[ScreenResult]) -> None:
    """Hand saved results to ``on_result``: a verdict shown from it is then one the results folder keeps (it was
    told before the batch's write, so a full disk showed REFER for a photograph that got no row)."""
    if on_result is not None:
        for r in results:
            on_result(r)


def _stopped_text(summary: RunSummary, expected: int | None) -> str | None:
    """What an interrupted run's report says of it (None: the run was not interrupted)."""
    if not summary.interrupted:
        return None
    done = summary.screened + summary.skipped
    of = f" of {expected}" if expected is not None and expected >= done else ""
    return f"the run was stopped after {done}{of} photographs"


def _count_quietly(inputs: Iterable[Any] | None, out: Path) -> int | None:
    """:func:`_count`, or None when counting fails or is interrupted (it only improves a message)."""
    logger = logging.getLogger("uopsl.runtime.inputs")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the walk's warnings were already shown once
    try:
        return _count(inputs, out)
    except (Exception, KeyboardInterrupt):  # noqa: BLE001
        return None
    finally:
        logger.setLevel(level)
