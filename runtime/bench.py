"""``uopsl-screen bench``: latency and throughput of each backend on this machine.

Per (backend, precision, batch): p50/p90/p99 latency of one ``infer`` call (a
whole batch: per call, not per image) and images per second, warm-up excluded.
Percentiles are nearest-rank (each is a latency some call had) and come with
the number of calls they were read from. Preprocessing (decode + FOV + resize) is
timed on its own, per image. End-to-end throughput runs the real screening
pipeline (read, decode, preprocess, quality gate, batched inference, decision)
over a set of photographs and is compared with pure inference throughput at the
same batch size: if it falls far below, preprocessing is the bottleneck. Only
photographs that reached the model count as screened: a folder of ungradable
ones is fast because it skips inference, not because the pipeline is.
TensorRT backends that expose ``last_timings`` (host-to-device, compute,
device-to-host) get those columns too, and ``host`` (the rest of the call:
copies into pinned memory, casts, output copies), with the number of engine
runs a batch took (``chunks``: a batch above the engine's maximum runs in
several) and the engine's batch range. Batches are timed smallest first; a row
whose calls ran padded to a larger batch (ONNX Runtime's CUDA backend keeps
its previous batch shape: ``OrtBackend.rows_for``) says ``padded_to``.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from uopsl.runtime.backends import BACKEND_NAMES, PRECISIONS, detect_availability, open_and_enter, select_backend
from uopsl.runtime.backends.base import Backend
from uopsl.runtime.bundle import Manifest
from uopsl.runtime.clikit import plural
from uopsl.runtime.errors import BackendError, ConfigError, ImageError, UopslError
from uopsl.runtime.pipeline import WORKER_POOLS, PipelineConfig, ScreeningPipeline, opencv_single_threaded
from uopsl.runtime.inputs import display_path, item_for_data, item_for_path, walk_images
from uopsl.runtime.preprocess import preprocess, read_bytes
from uopsl.runtime.optional import import_optional
from uopsl.runtime.version import __version__
from uopsl.runtime.parallelism import check_parallelism
from uopsl.runtime.signing import open_trusted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    """batches: batch sizes to time. iters/warmup: timed and untimed calls per case.
    threads: inference threads. e2e: also time the whole pipeline, with
    ``workers`` preprocessing threads or processes (None: the pipeline's default); ``worker_pool``: the
    pipeline's (``PipelineConfig.worker_pool``).
    e2e_images: how many photographs the end-to-end run screens (cycled if fewer exist). Its ratio
    divides by inference at the largest batch timed both before and after it (:func:`end_to_end_ratio`).
    """

    batches: tuple[int, ...] = (1, 8)
    iters: int = 50
    warmup: int = 5
    threads: int | None = None
    e2e: bool = True
    e2e_images: int = 200
    preprocess_images: int = 64
    workers: int | None = None
    worker_pool: str = "threads"

    def __post_init__(self) -> None:
        if not self.batches or any(b < 1 for b in self.batches):
            raise ConfigError(f"batch sizes must be >= 1, got {','.join(map(str, self.batches)) or 'none'}")
        if len(set(self.batches)) != len(self.batches):  # "--batch 1,1" timed and printed batch 1 twice
            raise ConfigError(f"a batch size is given twice in {','.join(map(str, self.batches))}; give each once")
        if self.iters < 1 or self.warmup < 0 or self.e2e_images < 1 or self.preprocess_images < 1:
            raise ConfigError("iters, e2e_images and preprocess_images must be >= 1 and warmup >= 0")
        if self.worker_pool not in WORKER_POOLS:
            raise ConfigError(f"worker_pool must be one of {', '.join(WORKER_POOLS)}, got {self.worker_pool!r}")
        check_parallelism("threads", self.threads)
        check_parallelism("workers", self.workers)


# -- synthetic photographs ----------------------------------------------------------------
def synthetic_fundus(seed: int, size: int = 512) -> np.ndarray:
    """An RGB uint8 fundus-like photograph: orange disc on black, optic disc, vessels, noise.

    Stand-in for real photographs in benchmarks and memory tests (the decoder
    and FOV detection do the same work on it as on a real image).
    """
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    c = size // 2
    r = int(size * rng.uniform(0.42, 0.48))
    base = (int(rng.integers(150, 210)), int(rng.integers(60, 100)), int(rng.integers(20, 45)))
    cv2.circle(img, (c, c), r, base, -1, cv2.LINE_AA)
    od = (c + int(r * rng.uniform(0.3, 0.5)) * (1 if seed % 2 else -1), c + int(rng.integers(-r // 8, r // 8 + 1)))
    cv2.circle(img, od, max(3, r // 7), (240, 200, 120), -1, cv2.LINE_AA)
    for _ in range(10):
        ang = rng.uniform(0, 2 * np.pi)
        end = (int(od[0] + np.cos(ang) * r * 1.2), int(od[1] + np.sin(ang) * r * 1.2))
        cv2.line(img, od, end, (120, 30, 20), max(1, size // 150), cv2.LINE_AA)
        for _ in range(3):  # thinner branches
            t = rng.uniform(0.2, 0.8)
            start = (int(od[0] + (end[0] - od[0]) * t), int(od[1] + (end[1] - od[1]) * t))
            a2 = ang + rng.uniform(-1.0, 1.0)
            tip = (int(start[0] + np.cos(a2) * r * 0.4), int(start[1] + np.sin(a2) * r * 0.4))
            cv2.line(img, start, tip, (130, 40, 25), 1, cv2.LINE_AA)
    for _ in range(int(rng.integers(20, 60))):  # small dots (haemorrhage / exudate-like)
        ang, rad = rng.uniform(0, 2 * np.pi), r * np.sqrt(rng.uniform(0, 0.8))
        col = (90, 20, 15) if rng.uniform() < 0.6 else (230, 210, 120)
        cv2.circle(img, (int(c + np.cos(ang) * rad), int(c + np.sin(ang) * rad)), max(1, size // 250), col, -1)
    # Fine texture (choroid-like), blurred so it reads as detail rather than sensor noise.
    tex = cv2.GaussianBlur(rng.normal(0.0, 10.0, (size, size)).astype(np.float32), (0, 0), 1.2)
    inside = img.max(axis=2) > 0
    out = img.astype(np.float32) + tex[:, :, None] * np.array([1.0, 0.6, 0.3], np.float32)
    img[inside] = np.clip(out[inside] + 0.5, 0, 255).astype(np.uint8)
    return img


def synthetic_jpeg(seed: int, size: int = 512, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(synthetic_fundus(seed, size), cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ConfigError("JPEG encoding failed")
    return buf.tobytes()


# -- statistics ----------------------------------------------------------------------------
#: Below this many timed calls a p99 is the slowest call or next to it; the table says so.
P99_MIN_CALLS = 100


def percentile_ms(ms: Any, q: float) -> float:
    """Nearest-rank percentile (numpy's ``inverted_cdf``): the smallest latency that at least ``q`` % of the
    calls stayed within, a latency some call had. Linear interpolation between 49 calls of 10 ms and one of
    100 ms read a p99 of 56 ms, a figure no call took; numpy's ``higher``, used before 2026-12-02, is one
    call later than the nearest rank for most counts (p99 of 100 calls was the slowest)."""
    return round(float(np.percentile(np.asarray(ms, np.float64), q, method="inverted_cdf")), 3)


def latency_stats(seconds: list[float], batch: int = 1) -> dict[str, float]:
    """p50/p90/p99/max/mean in ms per call, the number of calls, and images per second."""
    ms = np.asarray(seconds, np.float64) * 1e3
    mean = float(ms.mean())
    return {
        "p50_ms": percentile_ms(ms, 50),
        "p90_ms": percentile_ms(ms, 90),
        "p99_ms": percentile_ms(ms, 99),
        "max_ms": round(float(ms.max()), 3),
        "mean_ms": round(mean, 3),
        "calls": int(ms.size),
        "throughput_ips": round(batch * 1e3 / mean, 2),
    }


def machine_info() -> dict[str, Any]:
    from uopsl.runtime.backends import cpu_name

    info: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                            "uopsl": __version__, "opencv_threads": cv2.getNumThreads()}
    board = _board_model()
    if board:  # a Jetson's /proc/cpuinfo names no CPU model ("aarch64" above); its board says what it is
        info["board"] = board
    for mod in ("onnxruntime", "openvino", "tensorrt", "cv2", "numpy"):
        try:
            info[mod] = import_optional(mod).__version__
        except Exception:  # noqa: BLE001 - absent optional package
            pass
    return info


def _board_model() -> str | None:
    """The device-tree model string (Jetson and other ARM boards), or None."""
    try:
        text = Path("/proc/device-tree/model").read_bytes().rstrip(b"\0").decode("utf-8", "replace").strip()
    except OSError:
        return None
    return text or None


# -- pieces ----------------------------------------------------------------------------------
def time_backend(backend: Backend, batches: tuple[int, ...], iters: int, warmup: int,
                 images: np.ndarray) -> list[dict[str, Any]]:
    """Time ``backend.infer`` (already entered) at each batch size on preprocessed ``images``.

    Smallest batch first: ONNX Runtime's CUDA backend runs a batch smaller than its previous one padded to
    that size (``OrtBackend.rows_for``), so batch 1 timed after batch 16 would time 16 rows; a row says
    ``padded_to`` if its calls were padded all the same.
    """
    rows = []
    for b in sorted(batches):
        idx = np.arange(b) % len(images)
        x = np.ascontiguousarray(images[idx])
        for _ in range(warmup):
            backend.infer(x)
        durations: list[float] = []
        parts: dict[str, list[float]] = {}
        host: list[float] = []
        chunks = padded = 0
        for _ in range(iters):
            t0 = time.perf_counter()
            backend.infer(x)
            durations.append(time.perf_counter() - t0)
            padded = max(padded, int(getattr(backend, "last_padded_to", 0) or 0))
            extra = getattr(backend, "last_timings", None)
            if isinstance(extra, dict) and extra:
                for k, v in extra.items():
                    parts.setdefault(k, []).append(float(v))
                host.append(durations[-1] * 1e3 - sum(float(v) for v in extra.values()))
            chunks = max(chunks, int(getattr(backend, "last_chunks", 0) or 0))
        row: dict[str, Any] = {"batch": b, **latency_stats(durations, b)}
        for k, v in parts.items():
            row[f"{k}_p50_ms"] = percentile_ms(v, 50)
            row[f"{k}_p99_ms"] = percentile_ms(v, 99)
        if host:  # the call's wall time outside the device events: copies into pinned memory, casts, output copies
            row["host_p50_ms"] = percentile_ms(host, 50)
        if chunks:
            row["chunks"] = chunks
        if padded:
            row["padded_to"] = padded
        engine_range = getattr(backend, "batch_range", None)
        if isinstance(engine_range, tuple) and len(engine_range) == 2:
            row["engine_batch_range"] = [int(engine_range[0]), int(engine_range[1])]
            if b > engine_range[1] or b < engine_range[0]:
                log.warning("bench: batch %d is outside the engine's batch range %d-%d: it runs as %s", b,
                            engine_range[0], engine_range[1],
                            f"{chunks} engine runs" if b > engine_range[1] else
                            f"a batch padded to {engine_range[0]}")
        rows.append(row)
    return rows


def time_preprocess(blobs: list[bytes], manifest: Manifest, warmup: int = 2,
                    names: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-image decode + preprocess latency, single thread, after the first ``warmup`` images were run once
    untimed (caches, lazy imports: the cold first call took ~6x the median); every image is then timed.

    The result also holds ``quality_gate`` (the gate on each preprocessed image) and ``before_inference``
    (both, per photograph): a screening worker runs both before a photograph reaches the model, so that sum,
    not preprocessing alone, is most of the CPU a photograph costs besides inference (reading the file and
    handing it to a worker process are not in it).

    OpenCV runs single-threaded here, as in the screening pipeline's workers (its own threads made this
    figure a multi-threaded one under the table's "1 thread" label)."""
    with opencv_single_threaded():
        return _time_preprocess(blobs, manifest, warmup, names)


def _time_preprocess(blobs: list[bytes], manifest: Manifest, warmup: int,
                     names: Sequence[str] | None) -> dict[str, Any]:
    from uopsl.runtime.quality import assess  # the gate a screening run applies (ScreeningPipeline)

    for data in blobs[:warmup]:
        try:
            assess(preprocess(data, manifest.preprocess))
        except UopslError:
            pass
    prep, gate = [], []
    failures: list[str] = []
    for k, data in enumerate(blobs):
        t0 = time.perf_counter()
        try:
            pre = preprocess(data, manifest.preprocess)
        except UopslError as exc:
            if len(failures) < 3:
                failures.append(f"{names[k] if names is not None else f'image {k + 1}'}: {exc}")
            continue
        t1 = time.perf_counter()
        assess(pre)
        prep.append(t1 - t0)
        gate.append(time.perf_counter() - t1)
    if not prep:
        raise ConfigError(f"none of the {len(blobs)} benchmark image(s) could be preprocessed ("
                          + "; ".join(failures) + ("; ..." if len(blobs) > len(failures) else "")
                          + "); give --images fundus photographs, or leave it out to time synthetic ones")
    return {"images": len(prep), **latency_stats(prep), "quality_gate": latency_stats(gate),
            "before_inference": latency_stats([a + b for a, b in zip(prep, gate)])}


def time_end_to_end(backend: Backend, manifest: Manifest, sources: list[Any], batch: int,
                    workers: int | None = None, worker_pool: str = "threads") -> dict[str, Any]:
    """Images per second of the whole pipeline (read to decision) at ``batch``."""
    config = PipelineConfig(batch_size=batch, workers=workers, worker_pool=worker_pool)
    pool = config.pool_for(getattr(backend, "name", ""))
    pipe = ScreeningPipeline(backend, manifest, config)
    items = [item_for_path(s) if isinstance(s, Path) else item_for_data(s, f"synthetic{i}") for i, s in enumerate(sources)]
    # Warm the pool, the page cache and the backend on one batch.
    for _ in pipe.run(items[:batch]):
        pass
    t0 = time.perf_counter()
    statuses: dict[str, int] = {}
    inferred = 0
    for r in pipe.run(items):
        statuses[r.status] = statuses.get(r.status, 0) + 1
        inferred += "infer_ms" in r.timings  # reached the model (ungradable and unreadable ones mostly do not)
    dt = time.perf_counter() - t0
    if inferred < len(items):
        log.warning("bench: %d of %d photographs did not reach the model (%s); the end-to-end figure counts the "
                    "%d that did", len(items) - inferred, len(items),
                    ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())), inferred)
    # Screened photographs per second: the photographs that skipped the model (ungradable, unreadable) cost their
    # time but do not count, or a folder of them would read as a fast pipeline.
    return {"batch": batch, "images": len(items), "inferred": inferred, "seconds": round(dt, 3),
            "throughput_ips": round(inferred / dt, 2), "inputs_ips": round(len(items) / dt, 2),
            "statuses": statuses, "workers": config.workers_for(pool), "worker_pool": pool}


def _cases(bundle: Path, manifest: Manifest, backend: str, precision: str,
           skipped: list[dict[str, str]] | None = None) -> list[tuple[str, str]]:
    """The (backend, precision) pairs to measure. A name that is no backend or precision is refused; a pair
    named that this bundle or machine cannot run is left out and listed in ``skipped`` (the table says so;
    pairs ``all`` stands for are left out with a log line only)."""
    names = [n.strip() for n in backend.split(",") if n.strip()]
    precs = [p.strip() for p in precision.split(",") if p.strip()]
    for given, listed, what in ((names, BACKEND_NAMES, "backend"),
                                (precs, tuple(p for p in PRECISIONS if p != "auto"), "precision")):
        unknown = [x for x in given if x not in (*listed, "auto", "all")]
        if unknown or not given:
            raise ConfigError(f"unknown {what} {', '.join(map(repr, unknown)) or '(none given)'}; expected a "
                              f"comma-separated list of {', '.join(listed)} (or auto), or all alone")
        if "all" in given and len(given) > 1:
            raise ConfigError(f"'all' stands alone: it measures every {what} (got {', '.join(given)})")
    av = detect_availability()
    # A pair named on the command line that cannot run is listed; one that "all" expanded to is only logged.
    named = names != ["all"] and precs != ["all"]
    if names == ["all"]:
        usable = {"ort-cpu": "CPUExecutionProvider" in av.ort_providers, "ort-cuda": av.ort_cuda,
                  "ort-trt": av.ort_trt, "openvino": av.openvino, "tensorrt": av.tensorrt}
        names = [n for n in BACKEND_NAMES if usable[n]]
    if precs == ["all"]:
        precs = ["fp32", "fp16", "int8"]
    cases = []
    for n in names:
        for p in precs:
            try:
                select_backend(bundle, n, p, manifest=manifest, availability=av, measure=False)
            except UopslError as exc:
                if len(names) * len(precs) == 1:
                    raise
                log.info("bench: skipping %s %s: %s", n, p, exc)
                if skipped is not None and named:
                    skipped.append({"backend": n, "precision": p, "error": str(exc)})
                continue
            cases.append((n, p))
    if not cases:
        raise ConfigError(f"no usable backend/precision among {names} x {precs} for {bundle}")
    return cases


def _read_timed_files(paths: Sequence[Path], img_dir: Path) -> tuple[list[bytes], list[str] | None, list[str]]:
    """The bytes and display names of the files whose preprocessing is timed, and why each unreadable one was
    left out (a dangling link, a link loop, no permission): one such file among many must not stop a benchmark,
    as it does not stop a screening run (a review: "error: in1/loopA.jpg: cannot read file ..." and exit 2)."""
    blobs: list[bytes] = []
    names: list[str] = []
    unreadable: list[str] = []
    for path in paths:
        try:
            blobs.append(read_bytes(path))
        except ImageError as exc:
            unreadable.append(str(exc))
            continue
        names.append(display_path(path))
    if not blobs:
        raise ConfigError(f"none of the first {plural(len(paths), 'file')} under {img_dir} could be read ("
                          + "; ".join(unreadable[:3]) + ("; ..." if len(unreadable) > 3 else "")
                          + "); give --images a folder of readable photographs")
    if unreadable:
        log.warning("bench: %s of the first %d could not be read and %s not timed: %s%s",
                    plural(len(unreadable), 'file'), len(paths), "is" if len(unreadable) == 1 else "are",
                    "; ".join(unreadable[:3]), "; ..." if len(unreadable) > 3 else "")
    return blobs, names, unreadable


def run_bench(bundle: str | os.PathLike[str], backend: str = "auto", precision: str = "auto",
              config: BenchConfig | None = None, *, images: str | os.PathLike[str] | None = None,
              trusted_keys: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None) -> dict[str, Any]:
    """Benchmark the requested backends on ``bundle``; returns a JSON-serialisable dict.

    ``trusted_keys``: as :class:`uopsl.runtime.api.Screener`'s (a machine that trusts signing keys runs
    only signed bundles, benchmarks included).
    """
    cfg = config or BenchConfig()
    root = Path(bundle)
    # Figures are attributed to the bundle's files: they must be those files (and signed, where keys are trusted).
    m, _ = open_trusted(root, trusted_keys=trusted_keys)
    if images is not None:
        img_dir = Path(images)
        paths = [img_dir] if img_dir.is_file() else list(walk_images(img_dir))
        if not paths:
            raise ConfigError(f"no images found under {img_dir}")
        blobs, names, unreadable = _read_timed_files(paths[: cfg.preprocess_images], img_dir)
        # Unreadable files stay among the end-to-end inputs: a screening run gives them an error row, and so does this.
        e2e_sources: list[Any] = [paths[i % len(paths)] for i in range(cfg.e2e_images)]
        data_desc = f"{len(paths)} photographs from {img_dir}"
        if unreadable:
            data_desc += f" ({plural(len(unreadable), 'file')} of the first {len(paths[: cfg.preprocess_images])} unreadable)"
    else:
        blobs = [synthetic_jpeg(i) for i in range(cfg.preprocess_images)]
        names = None
        e2e_sources = [blobs[i % len(blobs)] for i in range(cfg.e2e_images)]
        data_desc = "synthetic 512x512 JPEG fundus-like images"
    prep = time_preprocess(blobs, m, cfg.warmup, names)
    model_inputs: list[np.ndarray] = []
    for data in blobs:  # the first max(batches) photographs that preprocess (broken ones are skipped)
        if len(model_inputs) >= max(cfg.batches):
            break
        try:
            model_inputs.append(preprocess(data, m.preprocess).image)
        except UopslError:
            continue
    batch_images = np.stack(model_inputs)  # not empty: time_preprocess found one that preprocesses
    result: dict[str, Any] = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "machine": machine_info(), "bundle": str(root.resolve()), "model": m.model_name,
                              "backbone": m.backbone, "input_size": m.preprocess.size, "data": data_desc,
                              "config": asdict(cfg), "preprocess": prep, "cases": [], "e2e": [],
                              "units": {"p50_ms": "milliseconds per infer call (one whole batch)",
                                        "throughput_ips": "images per second",
                                        "percentiles": "nearest rank (numpy method 'inverted_cdf')"}}
    try:
        sel = select_backend(root, "auto", "auto", manifest=m, threads=cfg.threads)
        result["auto"] = {"backend": sel.backend, "precision": sel.precision, "file": sel.file, "reason": sel.reason}
    except UopslError as exc:
        result["auto"] = {"error": str(exc)}
    result["failed"] = []  # what was asked for and not measured: cannot run here, or could not start
    cases = _cases(root, m, backend, precision, skipped=result["failed"])
    for name, prec in cases:
        # As a screening run opens it (Screener): ONNX Runtime without spin-waiting; `auto` that picked a GPU
        # which cannot start falls back to the CPU, as a run does.
        try:
            b = open_and_enter(root, name, prec, cfg.threads, manifest=m, measure=False if name != "auto" else None,
                               spin=False, batch=max(cfg.batches))
        except UopslError as exc:
            if len(cases) == 1:
                raise
            # One backend that cannot start here (a GPU wheel without a working GPU) must not lose the others.
            log.warning("bench: %s %s could not start: %s", name, prec, exc)
            result["failed"].append({"backend": name, "precision": prec, "error": str(exc)})
            continue
        opened = b.selection
        if opened is None:  # open_backend always records its choice; a None here is a bug, not bad input
            b.__exit__(None, None, None)
            raise BackendError(f"open_backend({name!r}, {prec!r}) returned a backend without its selection")
        log.info("bench: %s", b.describe())
        if name == "auto" and result.get("auto", {}).get("backend") not in (None, opened.backend):
            result["auto"] = {"backend": opened.backend, "precision": opened.precision, "file": opened.file,
                              "reason": f"{opened.reason} ({result['auto']['backend']} could not start here)"}
        try:
            rows = time_backend(b, cfg.batches, cfg.iters, cfg.warmup, batch_images)
            entry = next((f for f in m.files if f.path == opened.file), None)
            # What reproduces the figure: the file's digest, how the backend was opened (its thread count as
            # set, None: the runtime's own choice), and the backend's description (engines: TensorRT and GPU).
            said = {"file_sha256": entry.sha256 if entry is not None else None, "threads": cfg.threads,
                    "described": b.describe()}
            # Whether `auto` would run this file (its parity verdict here): a FAILed INT8 file is measured when
            # asked for, and its figures must not read as a usable choice.
            said["validated"] = opened.validated  # None: an FP32 file, the reference precision
            if opened.validated is False:  # why not: a FAIL reads differently from a file never validated here
                said["not_validated_because"] = opened.not_validated_because
            for r in rows:
                result["cases"].append({"backend": opened.backend, "precision": opened.precision, "file": opened.file,
                                        "requested": name, **said, **r})
            if cfg.e2e:
                bmax = max(cfg.batches)
                e2e = time_end_to_end(b, m, e2e_sources, bmax, cfg.workers, cfg.worker_pool)
                before = next(r["throughput_ips"] for r in rows if r["batch"] == bmax)
                # Inference timed again right after the end-to-end run: on a shared or throttling machine the
                # speed drifts, and a ratio over one timing taken before carries the drift (the same file read
                # 0.70 and 0.90 on one box, session 35). The ratio divides by both timings pooled.
                (again,) = time_backend(b, (bmax,), cfg.iters, 0, batch_images)
                e2e.update(end_to_end_ratio(e2e["throughput_ips"], before, again["throughput_ips"]))
                result["e2e"].append({"backend": opened.backend, "precision": opened.precision, "requested": name, **e2e})
        finally:
            b.__exit__(None, None, None)
    if not result["cases"]:
        raise BackendError("no backend could start here: " + "; ".join(f"{f['backend']} {f['precision']}: {f['error']}"
                                                                      for f in result["failed"]))
    if "auto" in (p.strip() for p in precision.split(",")):
        # The default measures what a run would use; a bundle's INT8 file that failed (or never had) its parity
        # check then goes unmeasured without a word, and "bench showed no INT8" reads as "there is none".
        timed = {c["file"] for c in result["cases"]}
        result["files_not_measured"] = [{"file": f.path, "precision": f.precision} for f in m.files
                                        if f.kind in ("onnx", "engine") and f.path not in timed]
    return result


# Drift between the inference timings before and after the end-to-end run above which the table says the
# machine was not steady (the spread of the ratio on a shared 2-core box was larger than this, session 35).
STEADY_DRIFT = 0.10


def end_to_end_ratio(e2e_ips: float, before_ips: float, after_ips: float) -> dict[str, float]:
    """End-to-end throughput over pure inference, the inference timed before and after the end-to-end run.

    Both timings cover the same number of calls, so they pool as total images over total time: the harmonic
    mean of the two rates. ``inference_drift`` is after / before - 1 (negative: inference got slower).
    """
    # 0 end to end is a real result (no photograph reached the model); pure inference is never 0.
    if e2e_ips < 0 or min(before_ips, after_ips) <= 0:
        raise ValueError(f"need end-to-end >= 0 and inference > 0 images/s, got {e2e_ips}, {before_ips}, {after_ips}")
    pooled = 2.0 / (1.0 / before_ips + 1.0 / after_ips)
    return {"inference_ips": round(pooled, 2), "inference_ips_before": before_ips, "inference_ips_after": after_ips,
            "inference_drift": round(after_ips / before_ips - 1.0, 3), "ratio": round(e2e_ips / pooled, 3)}


def format_table(result: dict[str, Any]) -> str:
    """The bench result as a plain-text table."""
    lines = [
        f"machine: {result['machine'].get('cpu')} ({result['machine'].get('cores')} cores); "
        f"model {result['model']} {result['backbone']} at {result['input_size']} px; {result['data']}",
        f"preprocess (decode+FOV+resize, 1 thread): p50 {result['preprocess']['p50_ms']:.2f} ms, "
        f"p90 {result['preprocess']['p90_ms']:.2f} ms, {result['preprocess']['throughput_ips']:.1f} img/s",
    ]
    gate, both = result["preprocess"].get("quality_gate"), result["preprocess"].get("before_inference")
    if gate and both:  # results saved before the gate was timed lack them
        lines.append(f"quality gate: p50 {gate['p50_ms']:.2f} ms; a worker's whole share of a photograph (both): "
                     f"p50 {both['p50_ms']:.2f} ms, mean {both['mean_ms']:.2f} ms, {both['throughput_ips']:.1f} img/s "
                     "per core")
    if "auto" in result:
        a = result["auto"]
        lines.append(f"auto picks: {a.get('backend')} {a.get('precision')} ({a.get('reason', a.get('error'))})")
    for f in result.get("failed", []):
        lines.append(f"not measured: {f['backend']} {f['precision']}: {f['error']}")
    skipped = result.get("files_not_measured") or []
    if skipped:
        lines.append("not measured: " + ", ".join(f"{f['file']} ({f['precision']})" for f in skipped)
                     + ": --precision auto times only what `run` would use here; --precision all times every "
                       "file this machine can run")
    hdr = (f"{'backend':10s} {'precision':12s} {'batch':>5s} {'calls':>5s} {'p50 ms':>9s} {'p90 ms':>9s} "
           f"{'p99 ms':>9s} {'img/s':>9s}")
    threads = (result.get("config") or {}).get("threads")
    lines += ["", "latency per infer call (a whole batch), nearest-rank percentiles; inference threads: "
              + (str(threads) if threads else "the runtime's default (one per core)"), hdr, "-" * len(hdr)]
    for c in result["cases"]:
        extra = "  ".join(f"{k}={v}" for k, v in c.items() if k.endswith("_p50_ms") and k != "p50_ms")
        if c.get("chunks", 1) > 1:
            extra += f"  engine runs per batch={c['chunks']} (engine batch {c['engine_batch_range']})"
        if c.get("padded_to"):
            extra += f"  ran as batch {c['padded_to']} (padded: ONNX Runtime CUDA keeps its last batch shape)"
        if c.get("validated") is False:
            why = c.get("not_validated_because")
            extra = f"NOT validated here{f': {why}' if why else ''} (auto would not run it)  {extra}"
        calls = c.get("calls")
        lines.append(f"{c['backend']:10s} {c['precision']:12s} {c['batch']:5d} {calls if calls else '?':>5} "
                     f"{c['p50_ms']:9.2f} {c['p90_ms']:9.2f} {c['p99_ms']:9.2f} {c['throughput_ips']:9.1f}"
                     + (f"  {extra.strip()}" if extra.strip() else ""))
    if any(isinstance(c.get("calls"), int) and c["calls"] < P99_MIN_CALLS for c in result["cases"]):
        lines.append(f"(p99 from fewer than {P99_MIN_CALLS} calls is the slowest call or next to it: use --iters "
                     f"{P99_MIN_CALLS} or more to quote it)")
    if result["e2e"]:
        lines += ["", "end to end: read + decode + preprocess + quality gate + inference + decision; ratio: its "
                  "img/s over pure inference's at the same batch",
                  f"{'end-to-end':10s} {'precision':12s} {'batch':>5s} {'images':>7s} {'img/s':>9s} {'infer img/s':>12s} {'ratio':>6s}"]
        for e in result["e2e"]:
            pool = (f"  ({e['workers']} worker {e['worker_pool']})" if e.get("workers") and e.get("worker_pool")
                    else "")  # results saved before the pool was recorded lack it
            lines.append(f"{e['backend']:10s} {e['precision']:12s} {e['batch']:5d} {e['images']:7d} "
                         f"{e['throughput_ips']:9.1f} {e['inference_ips']:12.1f} {e['ratio']:6.2f}{pool}")
            drift = e.get("inference_drift")  # results saved before inference was timed twice lack it
            if drift is not None and abs(drift) > STEADY_DRIFT:
                lines.append(f"  inference ran {abs(drift):.0%} {'faster' if drift > 0 else 'slower'} after the "
                             f"end-to-end run than before it ({e['inference_ips_before']:.1f} -> "
                             f"{e['inference_ips_after']:.1f} img/s): this machine was not steady, so the ratio "
                             "is uncertain by about as much; run bench again on an idle machine")
            inferred = e.get("inferred", e["images"])
            if inferred < e["images"]:
                lines.append(f"  only {inferred} of {e['images']} photographs reached the model "
                             f"({', '.join(f'{k} {v}' for k, v in sorted(e.get('statuses', {}).items()))}); "
                             "img/s counts those")
    return "\n".join(lines)
