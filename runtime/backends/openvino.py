"""OpenVINO backend for x86 CPUs (the laptops and mini-PCs many clinics use).

OpenVINO reads the bundle's ONNX files directly, including the QDQ INT8 graph,
whose Quantize/Dequantize pairs it turns into its own INT8 kernels (often much
faster than ONNX Runtime's on the same file). It is an optional extra
(the ``openvino`` extra), imported only when this backend loads.

Inference precision is pinned to f32 by default: on CPUs with bf16 support
(this project's AMD EPYC test machine included) OpenVINO 2026 otherwise computes
an FP32 model in bf16, which would make the deployed decisions drift from the
validated ones without anyone asking for it.

Batch self-check: OpenVINO 2026.4's CPU plugin computes a ``Mul -> ReduceSum ->
Add(bias)`` head (what the tiny contract model exports) wrongly for batches
larger than one: the bias is broadcast along the wrong axis, while batch-1
results match ONNX Runtime to 1e-7. So after compiling, the backend runs two
distinct images as one batch and one at a time; if the outputs disagree it logs
a warning and from then on runs batches one image at a time (slower, correct).
The comparison runs before the first batch of more than one image, not at load:
it costs three inferences (150-300 ms on a 2-core box), and a camera that sends
one photograph per start, or ``watch`` (batch 1), never needs it.

Compiled-model cache: a camera or ``uopsl-screen run`` loads the model on
every start, and compiling an INT8 file is most of that load, so the compiled
model is kept in the per-user cache folder,
``<cache>/openvino`` where ``<cache>`` is ``$UOPSL_CACHE_DIR``, else
``$XDG_CACHE_HOME/uopsl``, else ``~/.cache/uopsl``
(:func:`uopsl.runtime.fsio.user_cache_dir`, shared with uopsl's other caches),
never in the bundle (checksummed, perhaps read-only). ``UOPSL_OPENVINO_CACHE=0``
(or ``off``/``false``/``no``) turns it off; so does ``cache=False``. A folder that
cannot be made or written (read-only home, full disk), or one that others can
write, leaves the cache off for that load with one INFO line saying why; the
load itself never fails for the cache's sake. Measured (session 56, 2-core
EPYC, medians of 9 loads in fresh processes, OpenVINO 2026.4,
``benchmarks/openvino_cache_load.py``): the quick demo's INT8 file 393 ->
183 ms, its FP32 file 247 -> 179 ms, a ResNet-18 at 224 px INT8 240 -> 154
ms; the ResNet-18's FP32 file gains nothing (246 -> 255 ms: it compiles in
~50 ms, and checking its 45 MB blob costs ~30 ms). A first load, which
compiles and writes the entry, takes 25-90 ms more than before.

Why it is more than OpenVINO's ``CACHE_DIR`` pointed at that folder (each
measured with OpenVINO 2026.4, session 56):

* OpenVINO does not check a blob's bytes: 16 bytes flipped in a cached blob
  loaded "from cache" and moved probabilities by up to 0.65 (the quick demo's
  INT8 file; 0.2 for the tests' tiny FP32 model). (A blob cut short or with a
  garbled header it does notice, and recompiles.) So each entry records its
  files' sha256, and a file that does not match is thrown away and the model
  compiled afresh.
* OpenVINO writes a blob under its final name while it compiles (another
  process may read it half-written), and it memory-maps the blob it loads for
  the compiled model's life, so in one shared folder there is no moment at
  which a blob can be checked and then used as checked. So OpenVINO only ever
  sees a private folder per load (``.load-*``): a hard link to the entry's
  file, checked through that link (a copy where the file system has no hard
  links), or, for a fresh compile, the blob OpenVINO writes, published by
  renaming the complete folder into place. The private folder is removed after
  the load (on POSIX the mapping outlives the name; elsewhere a later load
  sweeps it once it is an hour old and no longer open). Published files are
  never written again: OpenVINO writes blobs read-only and removes one it
  rejects before writing a new one (2026.4, measured), so a checked file stays
  as checked while it is mapped. Power loss mid-publication leaves a file whose
  sha256 fails, which is rebuilt.
* ``compile_model(path)`` keys the cache on the *path* (a model swapped at the
  same path was served the old blob), so the backend keeps compiling the
  :class:`openvino.Model` it read, which OpenVINO keys on its content (weights
  included). The entry folder is keyed again on the file's sha256, the device
  and its name, the compile config (inference precision pin and threads
  included) and OpenVINO's version, so a blob is only offered where it was made.

The cache is as trusted as the folder it is in: someone who can write it can
make this machine screen with another model whatever the bundle's signature
says. So a folder owned by another user or writable by group or others is not
used (POSIX), and devices whose cache folder others can reach should set
``UOPSL_OPENVINO_CACHE=0``. Entries unused for :data:`CACHE_MAX_AGE_DAYS` are
removed when a new one is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from uopsl.runtime.backends.base import ModelFileBackend, TensorSpec, cache_dir, verified_model_path
from uopsl.runtime.fsio import sha256_file
from uopsl.runtime.errors import BackendError, ConfigError
from uopsl.runtime.optional import require

log = logging.getLogger(__name__)

_HINTS = ("LATENCY", "THROUGHPUT")


_CONTRACT_NAMES = ("image", "probs", "logits", "site_maps")


def _spec(port: Any) -> TensorSpec:
    pshape = port.get_partial_shape()
    shape = tuple(int(d.get_length()) if d.is_static else None for d in pshape)
    # A port can carry several names (OpenVINO keeps internal aliases such as
    # '/ReduceSum_output_0'); prefer the deployed-model contract's name.
    names = set(port.get_names())
    name = next((n for n in _CONTRACT_NAMES if n in names), port.get_any_name())
    return TensorSpec(name, shape, np.dtype(port.get_element_type().to_dtype()))



def openvino_cause(exc: BaseException) -> str:
    """The line of an OpenVINO error that says what went wrong.

    OpenVINO's texts open with where in its C++ sources the error was raised ("Exception from
    src/inference/src/cpp/core.cpp:84:"), which tells a user nothing; the cause ("Model can't be parsed")
    comes after, often last.
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    said = [ln for ln in lines if not ln.startswith("Exception from ") and not ln.startswith("Check '")]
    return (said[-1] if said else lines[0] if lines else type(exc).__name__)[:300]


#: environment variable that turns the compiled-model cache off: ``0``, ``off``, ``false`` or ``no``
CACHE_ENV = "UOPSL_OPENVINO_CACHE"
_CACHE_OFF = frozenset({"0", "off", "false", "no"})
_CACHE_ON = frozenset({"", "1", "on", "true", "yes"})
#: a cache entry not used for this many days is removed when a new entry is written
CACHE_MAX_AGE_DAYS = 60
#: a private load folder older than this is a leftover (a crashed load; on Windows, a file a process still maps)
_STALE_LOAD_S = 3600.0
_ENTRY_FILE = "entry.json"
_ENTRY_FORMAT = 1
_LOAD_PREFIX = ".load-"
#: the file names an entry may list (OpenVINO's are ``<decimal hash>.blob``): no separators, nothing hidden
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
_ENTRY_NAME = re.compile(r"[0-9a-f]{32}")


def openvino_cache_dir() -> Path:
    """Where compiled OpenVINO models are cached: ``openvino`` in the user cache folder (module docstring).

    Under :func:`uopsl.runtime.fsio.user_cache_dir` like every other uopsl cache, so ``UOPSL_CACHE_DIR`` moves
    them all at once (a device with a read-only home points it at writable storage).
    """
    return cache_dir() / "openvino"


def openvino_cache_enabled() -> bool:
    """Whether ``UOPSL_OPENVINO_CACHE`` leaves the compiled-model cache on (unset: on).

    A value that is neither on nor off keeps it on with a warning: a mistyped setting should not stop a
    screening run, and the cache never changes results (module docstring).
    """
    value = os.environ.get(CACHE_ENV, "").strip().lower()
    if value in _CACHE_OFF:
        return False
    if value not in _CACHE_ON:
        log.warning("%s=%r is not understood (expected 0/off/false/no to turn the OpenVINO cache off, or "
                    "1/on/true/yes); the cache stays on", CACHE_ENV, os.environ.get(CACHE_ENV))
    return True


def _copy_hashing(src: Path, dst: Path) -> str:
    """Copy ``src`` to a new file ``dst`` and return the sha256 of the bytes written (one pass over the file)."""
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while block := fin.read(1 << 20):
            h.update(block)
            fout.write(block)
    return h.hexdigest()


def _link_hashing(src: Path, dst: Path) -> str:
    """Hard-link ``src`` as the new name ``dst`` and return the sha256 of what ``dst`` now names; a copy where
    the file system has no hard links (FAT, some network shares).

    A link, not a copy: copying a ResNet-18's 45 MB FP32 blob cost 50 ms on the 2-core box, more than
    compiling it saved. Checking through ``dst`` checks the very file OpenVINO then maps.
    """
    try:
        os.link(src, dst)
    except FileNotFoundError:
        raise
    except OSError:
        return _copy_hashing(src, dst)
    return sha256_file(dst)


def _remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove a cache folder, best effort. OpenVINO writes its blobs read-only (0o440), which Windows will not
    delete until the read-only flag is cleared (POSIX deletes by the folder's permissions): cleared first."""
    if os.name == "nt":
        for folder, _dirs, names in os.walk(path):
            for name in names:
                try:
                    os.chmod(os.path.join(folder, name), stat.S_IREAD | stat.S_IWRITE)
                except OSError:
                    pass
    shutil.rmtree(path, ignore_errors=True)


def _unusable(root: Path) -> str | None:
    """Why ``root`` cannot hold the cache, after creating it (None: it can).

    Another user's folder, or one group or others can write, is refused (POSIX): whoever can write the cache
    decides what this machine computes, whatever the bundle's signature says.
    """
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = root.stat()
    except OSError as exc:
        return f"cannot create {root} ({exc})"
    if hasattr(os, "geteuid"):
        if st.st_uid != os.geteuid():
            return f"{root} belongs to another user (uid {st.st_uid}, this process runs as {os.geteuid()})"
        if st.st_mode & 0o022:
            return f"{root} is writable by group or others (mode {st.st_mode & 0o777:o}; chmod 700 it)"
    return None


def _sweep(root: Path, *, entries: bool) -> None:
    """Remove what no load will use: private load folders older than an hour and, with ``entries``, entries
    not used for :data:`CACHE_MAX_AGE_DAYS` (a ``.load-*`` folder still in use elsewhere survives: it is young,
    and on Windows a mapped file cannot be removed). Best effort: nothing here stops a load."""
    now = time.time()
    try:
        children = list(os.scandir(root))
    except OSError:
        return
    for child in children:
        try:
            if child.name.startswith(_LOAD_PREFIX):
                if now - child.stat(follow_symlinks=False).st_mtime > _STALE_LOAD_S:
                    _remove_tree(child.path)
            elif entries and _ENTRY_NAME.fullmatch(child.name):
                if now - os.stat(os.path.join(child.path, _ENTRY_FILE)).st_mtime > CACHE_MAX_AGE_DAYS * 86400:
                    _remove_tree(child.path)
        except OSError:
            continue


class _CacheSlot:
    """One load's use of the cache: the entry it may reuse (``entry``) and the private folder OpenVINO reads
    and writes during the load (``private``; module docstring says why OpenVINO never sees the entry itself).

    ``key``: what the entry is keyed on (JSON; written into the entry for whoever reads the folder).
    """

    def __init__(self, root: Path, key: dict[str, Any], private: Path) -> None:
        self.root = root
        self.key = key
        self.entry = root / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        self.private = private
        #: name -> sha256 of the verified entry files linked into ``private`` (empty: nothing reusable)
        self.staged: dict[str, str] = {}

    @classmethod
    def open(cls, root: Path, key: dict[str, Any]) -> _CacheSlot | None:
        """The slot for ``key`` with the entry's files linked in when they check out; None (one INFO line
        saying why) when the cache folder cannot be used."""
        why = _unusable(root)
        if why is None:
            _sweep(root, entries=False)
            try:
                private = Path(tempfile.mkdtemp(prefix=_LOAD_PREFIX, dir=root))
            except OSError as exc:
                why = f"cannot write in {root} ({exc})"
        if why is not None:
            log.info("OpenVINO compiled-model cache not used: %s; compiling without it (set UOPSL_CACHE_DIR to a "
                     "folder only this user can write, or %s=0 to stop trying)", why, CACHE_ENV)
            return None
        slot = cls(root, key, private)
        slot._stage()
        return slot

    def discard(self, why: str) -> None:
        """Remove the entry (damaged, or not one OpenVINO takes), saying why in one INFO line."""
        log.info("OpenVINO cache entry %s not used: %s; compiling afresh and caching the result", self.entry.name,
                 why)
        _remove_tree(self.entry)

    def _stage(self) -> None:
        """Link the entry's files into the private folder, each checked against the sha256 the entry records.
        A damaged entry is removed; one that cannot be read just now (disk full, removed meanwhile) is left."""
        try:
            meta = json.loads((self.entry / _ENTRY_FILE).read_text("utf-8"))
        except FileNotFoundError:
            if self.entry.exists():  # published entries always hold entry.json: a removal cut short
                self.discard(f"no {_ENTRY_FILE}")
            return
        except (OSError, ValueError) as exc:
            self.discard(f"unreadable {_ENTRY_FILE} ({exc})")
            return
        files = meta.get("files") if isinstance(meta, dict) and meta.get("format") == _ENTRY_FORMAT else None
        if not (isinstance(files, dict) and files and all(
                isinstance(n, str) and _FILE_NAME.fullmatch(n) and n != _ENTRY_FILE and isinstance(d, str)
                for n, d in files.items())):
            self.discard(f"{_ENTRY_FILE} is not one this version writes")
            return
        staged: dict[str, str] = {}
        for name, digest in sorted(files.items()):
            try:
                got = _link_hashing(self.entry / name, self.private / name)
            except FileNotFoundError:
                self._clear_private()
                if self.entry.exists():
                    self.discard(f"{name} is missing")
                return
            except OSError as exc:  # a copy that does not fit (disk full), a read error: compile without it
                log.info("OpenVINO cache entry %s cannot be read for this load (%s); compiling", self.entry.name, exc)
                self._clear_private()
                return
            if got != digest:
                self._clear_private()
                self.discard(f"{name} is damaged (its sha256 is not the one recorded)")
                return
            staged[name] = got
        self.staged = staged
        try:
            os.utime(self.entry / _ENTRY_FILE)  # last used, for the age sweep
        except OSError:
            pass

    def _clear_private(self) -> None:
        for f in list(self.private.iterdir()) if self.private.is_dir() else ():
            try:
                f.unlink()
            except OSError:
                pass

    def finish(self, hit: bool) -> None:
        """After a load whose model file checked out: publish what a fresh compile wrote, unless the entry
        was used (``hit``). Best effort: the compiled model is already loaded."""
        if hit:
            return
        if self.staged:
            self.discard("OpenVINO did not take its blob (another OpenVINO build or CPU, or another model)")
        try:
            names = sorted(f.name for f in self.private.iterdir() if f.is_file())
            files = {n: sha256_file(self.private / n) for n in names}
            for n, d in self.staged.items():  # the entry's files, which OpenVINO did not take
                if files.get(n) == d:
                    (self.private / n).unlink()
                    del files[n]
            if not files:
                log.debug("OpenVINO wrote no cache file (device without caching, or the disk is full)")
                return
            if not all(_FILE_NAME.fullmatch(n) and n != _ENTRY_FILE for n in files):
                log.debug("OpenVINO cache files %s not cached: unexpected names", sorted(files))
                return
            meta = {"format": _ENTRY_FORMAT, "files": files, "key": self.key,
                    "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (self.private / _ENTRY_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True), "utf-8")
            # One rename publishes a complete entry; it fails where another load published first.
            os.rename(self.private, self.entry)
        except OSError as exc:
            log.debug("compiled model not cached (%s): %s", self.entry, exc)
            return
        log.debug("compiled model cached in %s", self.entry)
        _sweep(self.root, entries=True)

    def close(self) -> None:
        """Remove the private folder (on POSIX a blob OpenVINO maps stays readable to it; elsewhere the sweep
        removes it once no process has it open)."""
        _remove_tree(self.private)


class OpenVinoBackend(ModelFileBackend):
    """An OpenVINO compiled model over one ONNX file.

    device: OpenVINO device name ("CPU"; "GPU" for Intel iGPUs where the plugin is present).
    threads: inference threads (None: OpenVINO's default, all physical cores).
    hint: OpenVINO performance hint, LATENCY (one request at a time, what the
        screening pipeline does) or THROUGHPUT.
    inference_precision: "f32" (default, see the module docstring) or "bf16"/"f16".
    precision: what the file computes in, for logs and reports (from the manifest).
    cache: reuse and keep compiled models in :func:`openvino_cache_dir` (module docstring); False, or
        ``UOPSL_OPENVINO_CACHE=0``, compiles every load.
    """

    name = "openvino"

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "CPU",
        threads: int | None = None,
        *,
        hint: str = "LATENCY",
        inference_precision: str = "f32",
        precision: str = "fp32",
        batch_check: bool = True,
        cache: bool = True,
    ) -> None:
        super().__init__(path, threads, precision)
        if hint not in _HINTS:
            raise ConfigError(f"hint must be one of {_HINTS}, got {hint!r}")
        self.device = device
        self.hint = hint
        self.inference_precision = inference_precision
        self.batch_check = batch_check
        #: True when the batch self-check failed and batches run image by image
        self.split_batches = False
        #: whether batched outputs still have to be compared with single-image ones (before the first batch > 1)
        self._batching_unchecked = False
        self.cache = cache
        #: after load: whether the compiled model came from the cache (None: the cache was off or unusable)
        self.loaded_from_cache: bool | None = None
        self._compiled: Any = None
        self._request: Any = None

    def load(self) -> None:
        ov = require("openvino", "the OpenVINO backend")
        self._check_file()
        core = ov.Core()
        if self.device not in core.available_devices:
            raise BackendError(
                f"OpenVINO device {self.device!r} is not available here (available: {core.available_devices})"
            )
        # The precision on every device: the GPU plugin's default is f16, the CPU's bf16 where the CPU has it.
        config: dict[str, Any] = {"PERFORMANCE_HINT": self.hint, "INFERENCE_PRECISION_HINT": self.inference_precision}
        if self.device == "CPU" and self.threads is not None:
            config["INFERENCE_NUM_THREADS"] = self.threads
        slot = self._cache_slot(ov, core, config)
        self.loaded_from_cache = None
        try:
            # The file the manifest lists is the file compiled (verified_model_path: opened and hashed once).
            with verified_model_path(self.path, self.expected_sha256) as load_path:
                try:
                    model = core.read_model(load_path)
                    self._compiled = self._compile(core, model, config, slot)
                except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long texts
                    raise BackendError(f"OpenVINO cannot compile {self.path} for {self.device}: {openvino_cause(exc)}; "
                                       "if the file is damaged, copy the bundle again or export it again") from exc
            if slot is not None and self.loaded_from_cache is not None:
                slot.finish(self.loaded_from_cache)  # only once the file is known unchanged through the load
        finally:
            if slot is not None:
                slot.close()
        self._request = self._compiled.create_infer_request()
        self._inputs = tuple(_spec(p) for p in self._compiled.inputs)
        self._outputs = tuple(_spec(p) for p in self._compiled.outputs)
        log.debug("compiled %s for OpenVINO %s (%s; %s)", self.path.name, self.device, config,
                  {None: "no cache", True: "from the cache", False: "not cached before"}[self.loaded_from_cache])
        self.split_batches = False
        self._batching_unchecked = self.batch_check and self._batch_checkable()

    def _cache_slot(self, ov: Any, core: Any, config: dict[str, Any]) -> _CacheSlot | None:
        """This load's cache slot, keyed on all that decides the compiled model; None when the cache is off."""
        if not (self.cache and openvino_cache_enabled()):
            return None
        try:
            digest = self.expected_sha256 or sha256_file(self.path)  # the manifest's is verified by the load
        except OSError:
            return None  # the load reports the unreadable file
        try:
            device_name = str(core.get_property(self.device, "FULL_DEVICE_NAME"))
        except Exception:  # noqa: BLE001 - a plugin without the property: the device name alone
            device_name = "unknown"
        key = {"model_sha256": digest, "device": self.device, "device_name": device_name,
               "openvino": str(ov.get_version()), "config": {k: str(v) for k, v in sorted(config.items())}}
        try:
            root = openvino_cache_dir()
        except (OSError, RuntimeError, KeyError) as exc:
            # No home folder to put it in (HOME unset and a uid without a passwd entry, as containers run):
            # Path.home() raises RuntimeError. The load must not fail for the cache's sake.
            log.info("OpenVINO compiled-model cache not used: no cache folder (%s); compiling without it (set "
                     "UOPSL_CACHE_DIR to a folder only this user can write)", exc)
            return None
        return _CacheSlot.open(root, key)

    def _compile(self, core: Any, model: Any, config: dict[str, Any], slot: _CacheSlot | None) -> Any:
        """``model`` compiled, through the cache's private folder when there is one (a failure there is
        retried without the cache); sets :attr:`loaded_from_cache`."""
        if slot is None:
            return core.compile_model(model, self.device, config)
        try:
            compiled = core.compile_model(model, self.device, {**config, "CACHE_DIR": str(slot.private)})
        except Exception as exc:  # noqa: BLE001 - retried without the cache; a second failure is the model's
            log.info("OpenVINO could not compile %s with its cache (%s); compiling without it", self.path.name,
                     openvino_cause(exc))
            compiled = core.compile_model(model, self.device, config)
            if slot.staged:  # the model compiles, so the entry was at fault
                slot.discard("OpenVINO failed on it")
            return compiled
        try:
            self.loaded_from_cache = bool(compiled.get_property("LOADED_FROM_CACHE"))
        except Exception:  # noqa: BLE001 - a plugin that does not say: treated as a fresh compile
            self.loaded_from_cache = False
        return compiled

    #: largest disagreement between batched and single-image outputs the self-check accepts
    BATCH_CHECK_ATOL = 1e-3

    def _batch_checkable(self) -> bool:
        """Whether the file takes batches the self-check must compare; a fixed batch above one fails here, at
        load, since no single-image run exists to compare with."""
        spec = self._inputs[0]
        if spec.shape and spec.shape[0] == 1:
            return False  # static batch of one: nothing to check
        if spec.shape and spec.shape[0] is not None:
            # No single-image run to compare with, and the CPU plugin's known batched-head error would go unseen
            # (measured on such a file: probabilities 0.07 off ONNX Runtime's).
            raise BackendError(
                f"{self.path.name} has a fixed batch of {spec.shape[0]}: the OpenVINO backend checks batched against "
                "single-image outputs (its CPU plugin gets some heads wrong for batches > 1) and cannot here. Export "
                "the model with a dynamic batch (uopsl export does), or use --backend ort-cpu")
        return True

    def _check_batching(self) -> None:
        spec = self._inputs[0]
        shape = tuple(2 if i == 0 else (s if s is not None else 64) for i, s in enumerate(spec.shape))
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, shape, dtype=np.uint8) if spec.dtype == np.uint8 else rng.random(shape).astype(spec.dtype)
        batched = self._run(x)
        singles = [self._run(x[i : i + 1]) for i in range(2)]
        worst = 0.0
        for name, value in batched.items():
            ref = np.concatenate([s[name] for s in singles])
            if value.shape == ref.shape and np.issubdtype(value.dtype, np.floating):
                worst = max(worst, float(np.nanmax(np.abs(value.astype(np.float64) - ref))))
        if worst > self.BATCH_CHECK_ATOL:
            self.split_batches = True
            log.warning(
                "OpenVINO computes batched outputs of %s differently from single-image ones (max difference %.3g); "
                "running one image at a time (correct, slower). Known CPU plugin issue with Mul+ReduceSum+Add heads",
                self.path.name, worst,
            )

    def close(self) -> None:
        self._request = None
        self._compiled = None

    def _label(self) -> str:
        return f"openvino-{self.device.lower()}"

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "threads": self.threads, "device": self.device, "hint": self.hint,
                "inference_precision": self.inference_precision}

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._batching_unchecked and batch.shape[0] > 1:
            self._check_batching()  # infer() holds the backend's lock: one check, before any batched result
            self._batching_unchecked = False
        if self.split_batches and batch.shape[0] > 1:
            parts = [self._run(batch[i : i + 1]) for i in range(batch.shape[0])]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        try:
            res = self._request.infer({0: batch})
        except Exception as exc:
            raise BackendError(f"openvino: inference failed on a batch of shape {batch.shape}: {exc}") from exc
        # The request reuses its output buffers on the next call: copy out.
        return {spec.name: np.array(res[port]) for spec, port in zip(self._outputs, self._compiled.outputs)}
