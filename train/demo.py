"""The end-to-end demo: synthetic data -> pre-training -> fine-tuning -> evaluation -> export ->
calibration / INT8 -> a screening report, in a fixed layout::

    OUT/data          synthetic train / val / test pools (uopsl synth)
    OUT/checkpoints   pretrain/ and finetune/ checkpoint folders
    OUT/eval          eval.json + roc.png on the held-out synthetic test pool (with where the
                      predilection maps point against the true site masks)
    OUT/bundle        the deployment bundle (FP32 ONNX, calibration table, INT8 ONNX)
    OUT/screen        results.csv / results.jsonl / report.html of the test photographs

Every step skips work already done, so an interrupted demo resumes. ``quick``
is the variant the tests run (small pools, small images, frozen encoder).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from uopsl.runtime.fsio import sha256_file, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; ``quick()`` is the small variant the tests run (19 s on an idle 2-core box)."""

    n_train: int = 400
    n_oct: int = 200
    n_val: int = 100
    n_test: int = 120
    image_size: int = 384
    model_size: int = 256
    backbone: str = "efficientnet_lite0"
    pretrain_epochs: int = 8
    finetune_epochs: int = 12
    freeze_encoder: bool = True
    calib_images: int = 64
    seed: int = 0
    # The release gate's bootstrap: `uopsl validate`'s default (200 left ~0.003 of Monte Carlo error in the
    # interval ends, against gates of 0.005: a review).
    n_boot: int = 1000

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(n_train=80, n_oct=40, n_val=30, n_test=24, image_size=256, model_size=128,
                   pretrain_epochs=2, finetune_epochs=3, calib_images=16, n_boot=200)


#: Resamples of the demo's `evaluate` (its AUC intervals); `DemoConfig.n_boot` is the release gate's.
EVALUATE_N_BOOT = 200


class StageClock:
    """Seconds each demo stage took, each timed from its own start (one decimal, as logged).

    Subtracting the earlier stages' rounded times from the time since the start, as before, logged a resumed
    stage that had nothing to do as "-0.0 s".
    """

    def __init__(self, start: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._last = start
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = self._clock()
        self.seconds[name] = round(now - self._last, 1)
        self._last = now
        log.info("demo: %s done (%.1f s)", name, self.seconds[name])


def run_demo(out: Path, cfg: DemoConfig, command: str = "") -> dict[str, object]:
    """Run every stage into ``out``; returns a summary (also written to OUT/demo.json). ``command``: what the
    release gate's report records as the command that made it (the CLI passes its own)."""
    from uopsl.calibration.dataset import build_calibration_set
    from uopsl.calibration.ranges import calibrate
    from uopsl.export.bundle_writer import add_file
    from uopsl.export.quantize import QuantizeConfig, quantize_model
    from uopsl.runtime.api import Screener
    from uopsl.runtime.bundle import verify_or_raise
    from uopsl.train import data
    from uopsl.train.commands.common import items_for
    from uopsl.train.commands.validate import declared_classes
    from uopsl.train.loops import TrainConfig
    from uopsl.train.synthetic import SEEN_CLASSES, SynthConfig, make_dataset
    from uopsl.train.workflow import (
        data_record,
        earlier_images,
        new_model,
        run_evaluate,
        run_export,
        run_finetune,
        run_pretrain,
        with_training_data,
    )

    t0 = time.perf_counter()
    clock = StageClock(t0)
    timings = clock.seconds
    lap = clock.lap

    d = out / "data"
    synth = SynthConfig(size=cfg.image_size, seed=cfg.seed)
    train_dir = make_dataset(d / "train", cfg.n_train, cfg.n_oct, synth)
    val_dir = make_dataset(d / "val", cfg.n_val, 0, SynthConfig(size=cfg.image_size, seed=cfg.seed + 1))
    test_dir = make_dataset(d / "test", cfg.n_test, 0, SynthConfig(size=cfg.image_size, seed=cfg.seed + 2))
    lap("data")

    classes = ("normal",) + SEEN_CLASSES
    train, val, test = (data.read_synthetic(p) for p in (train_dir, val_dir, test_dir))
    model, meta = new_model(classes, variant="uopsl", backbone=cfg.backbone, size=cfg.model_size, seed=cfg.seed,
                            data_fingerprint=train.fingerprint)
    ck = out / "checkpoints"
    cache = out / "cache"
    common = dict(batch_size=16, seed=cfg.seed, freeze_encoder=cfg.freeze_encoder, augment=not cfg.freeze_encoder,
                  save_every=25)
    # The pre-trained model is what run_pretrain returns: on a rerun it is the finished one it loads (pre-training
    # trains `model` in place only when it runs), so a run stopped between the stages fine-tunes the right model.
    meta = with_training_data(meta, data_record("pretrain", train, "fundus"), data_record("pretrain", train, "oct"))
    model = run_pretrain(model, meta, items_for(train, classes, "fundus"), items_for(train, classes, "oct"),
                         TrainConfig(epochs=cfg.pretrain_epochs, lr=2e-3, **common), ck / "pretrain", cache)  # type: ignore[arg-type]
    lap("pretrain")
    model, meta = run_finetune(model, with_training_data(meta, data_record("finetune", train, "fundus"),
                                                         data_record("validation", val, "fundus")),
                               items_for(train, classes, "fundus"), items_for(val, classes, "fundus"),
                               TrainConfig(epochs=cfg.finetune_epochs, lr=2e-3, **common), ck / "finetune", cache,  # type: ignore[arg-type]
                               seen_before=earlier_images(ck / "pretrain"))
    lap("finetune")
    test_masks = [s.extra.get("masks") for s in test.samples if s.modality == "fundus"]
    report = run_evaluate(ck / "finetune", items_for(test, classes, "fundus"), out / "eval", n_boot=EVALUATE_N_BOOT, cache=cache,
                          masks=test_masks, label_space=declared_classes(test),
                          context={"command": command or f"run_demo({str(out)!r}, {cfg!r})",
                                   "data": f"synthetic:{test_dir}", "data_fingerprint": test.fingerprint})
    lap("evaluate")

    bundle = out / "bundle"
    if not (bundle / "manifest.json").is_file():
        run_export(ck / "finetune", bundle, use_status="demonstration")
    lap("export")
    calib_paths = [s.path for s in train.samples if s.modality == "fundus"]
    cset = build_calibration_set(calib_paths, meta.preprocess, max_images=cfg.calib_images, seed=cfg.seed,
                                 cache=cache / "calib.npz", show_progress=False)
    table = calibrate(bundle / "model.onnx", cset, method="percentile", out=bundle / "calibration.json",
                      show_progress=False)
    add_file(bundle, None, "calibration.json", "calibration", calibration_fingerprint=cset.fingerprint)
    int8 = bundle / "model.int8.onnx"
    if not int8.is_file():
        q = quantize_model(bundle / "model.onnx", table, int8, QuantizeConfig(variant="cpu"), calib_set=cset,
                           show_progress=False)
        # with the sha256 of the table it came from, as `uopsl quantize` records it (it recorded "")
        q = replace(q, table_sha256=sha256_file(bundle / "calibration.json"))
        add_file(bundle, None, "model.int8.onnx", "onnx", "int8-qdq-u8", info=q.manifest_info())
    verify_or_raise(bundle)
    lap("calibrate+quantize")

    # The release gate: every file of the bundle against the PyTorch model on the labelled test set.
    # Its verdicts go into the manifest, so `auto` takes the INT8 file only if it passed.
    from uopsl.export.parity_metrics import failed_gate_headroom
    from uopsl.export.validate import ValidateConfig, validate_bundle
    from uopsl.train.commands.validate import resolve_data, torch_reference

    records, space, description = resolve_data(f"synthetic:{test_dir}")
    # The same reference and record as `uopsl validate --checkpoint` (the checkpoint's weights sha256 against
    # the bundle's, device, the command): the demo's PASS of model.onnx is what device validation builds on.
    reference, facts, _ = torch_reference(bundle, ck / "finetune", "cpu", False)
    vcfg = ValidateConfig(n_boot=cfg.n_boot, show_progress=False)
    context = {**facts, "data": f"synthetic:{test_dir}", "data_description": description, "limit": None,
               "bootstrap_seed": vcfg.seed, "command": command or f"run_demo({str(out)!r}, {cfg!r})"}
    parity = validate_bundle(bundle, reference, records, out / "parity", vcfg, label_space=space, context=context)
    verdicts = {c["name"]: c.get("verdict") or ("PASS" if c["passed"] else "FAIL") for c in parity.report["candidates"]}
    # Why a file failed, whether a more precise one could pass (decision headroom), and whether this CPU's INT8
    # kernels rather than the file are to blame (x86 without VNNI).
    why = {c["name"]: list(c.get("reasons", ())) + failed_gate_headroom(c)
           + ([c["arithmetic"]["note"]] if (c.get("arithmetic") or {}).get("note") else [])
           for c in parity.report["candidates"] if not c["passed"]}
    lap("validate")

    test_images = sorted(p for p in (test_dir.parent / "fundus").glob("*") if p.is_file())
    with Screener(bundle, backend="ort-cpu") as screener:
        summary = screener.screen_to(out / "screen", [str(p) for p in test_images], overlays=True)
    lap("screen")
    res = {
        # config.n_boot is the release gate's (validate); the evaluation's own is beside it.
        "out": str(out), "config": cfg.__dict__, "evaluate_n_boot": EVALUATE_N_BOOT, "seconds": timings, "total_seconds": round(time.perf_counter() - t0, 1),
        "test_macro_auc": report["macro"]["auc"],
        # what the headline interval rests on (a review: 28 of 200 resamples undefined, every class too small)
        "test_too_few_cases": [c["name"] for c in report.get("classes", ()) if c.get("too_few_cases")],
        "site_concentration": report.get("site_concentration", {}),
        "screened": summary.total, "referred": summary.refer,
        "report": str(out / "screen" / "report.html"), "bundle": str(bundle),
        "parity": verdicts, "parity_failures": why, "parity_report": str(parity.html_path),
    }
    write_json(out / "demo.json", res)
    return res
