"""``uopsl qat``: quantization-aware fine-tuning of a checkpoint's encoder (see :mod:`uopsl.train.qat`)."""

from __future__ import annotations

from pathlib import Path

import click

from uopsl.runtime.clikit import FiniteFloatRange
from uopsl.train.commands.common import check_out_folder, image_cache, items_for, load_source


@click.command("qat")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", "data_spec", required=True,
              help="Fundus photographs, KIND:PATH[:opts] (labels are not used: the FP32 model is the teacher).")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--images", type=click.IntRange(1), default=None, help="Use at most N photographs (the first N).")
@click.option("--epochs", type=click.IntRange(1), default=2, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--lr", type=FiniteFloatRange(0.0, min_open=True), default=3e-6, show_default=True,
              help="Learning rate of the encoder (the only part that trains).")
@click.option("--bias-lr", type=FiniteFloatRange(0.0, min_open=True), default=3e-6, show_default=True,
              help="Learning rate of the encoder's biases and BatchNorm shifts.")
@click.option("--calib-images", type=click.IntRange(1), default=64, show_default=True,
              help="Photographs whose activation ranges fix the simulated uint8 grids (minmax).")
@click.option("--augment/--no-augment", default=True, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True,
              help="cpu, cuda, cuda:1 ... (cpu by default, unlike the other training commands' auto: QAT has "
                   "only been run on the CPU so far).")
@click.option("--save-every", type=click.IntRange(0), default=50, show_default=True,
              help="Steps between resumable checkpoints (0: epoch ends only).")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path), default=None,
              help="Folder for preprocessed-image caches: copies of the photographs (default: images/ in the "
                   "user cache folder, $UOPSL_CACHE_DIR, else $XDG_CACHE_HOME/uopsl or ~/.cache/uopsl; never "
                   "inside --out).")
def command(checkpoint: Path, data_spec: str, out: Path, images: int | None, epochs: int, batch_size: int,
            lr: float, bias_lr: float, calib_images: int, augment: bool, seed: int, device: str, save_every: int,
            cache_dir: Path | None) -> None:
    """Fine-tune CHECKPOINT's encoder under simulated INT8 to keep its FP32 outputs.

    Writes a checkpoint (stage "qat", the same operating thresholds) to OUT.
    Then: uopsl export, calibrate --method minmax, quantize, and validate the
    INT8 file against the ORIGINAL checkpoint.
    """
    from dataclasses import replace

    from uopsl.train.checkpoint import TEACHER_DIGEST_KEY, checkpoint_digest, load_model
    from uopsl.train.qat import QatConfig, qat_finetune
    from uopsl.train.torchdata import ImageDataset
    from uopsl.train.workflow import (
        data_record,
        earlier_images,
        finished_run,
        record_images_seen,
        refuse_unfinished,
        resume_key,
        run_identity,
        with_training_data,
    )

    real_out, real_ckpt = out.resolve(), checkpoint.resolve()
    if real_out == real_ckpt or real_out in real_ckpt.parents or real_ckpt in real_out.parents:
        # The teacher is read throughout and `uopsl validate` needs it afterwards: never written over.
        raise click.UsageError(f"--out {out} is CHECKPOINT {checkpoint}, or holds it, or lies inside it: the "
                               "original model must stay as it is (the INT8 file is validated against it); "
                               "choose a new --out")
    check_out_folder(out, cache_dir)

    cfg = QatConfig(epochs=epochs, batch_size=batch_size, lr=lr, bias_lr=bias_lr, calib_images=calib_images, seed=seed,
                    augment=augment, device=device, save_every=save_every)
    model, meta = load_model(checkpoint)
    refuse_unfinished(checkpoint, meta)  # a teacher without its thresholds would hand its QAT copy the same gap
    # The INT8 file of this model is validated against the original (the teacher): export carries its digest.
    meta = replace(meta, train_config={**meta.train_config, TEACHER_DIGEST_KEY: checkpoint_digest(checkpoint)})
    src = load_source(data_spec)
    items = items_for(src, meta.model.classes, "fundus")
    if images is not None:
        items = items[:images]
    meta = with_training_data(meta, {**data_record("qat", src, "fundus"), "n_images": len(items)})
    # An interrupted run resumes only with the same teacher weights and photographs (and settings); a finished
    # one in --out is reused by the same run and refused to any other, before anything is written.
    want = run_identity("qat", cfg.train_config(), model, items)
    if finished_run(out, "qat", want):
        click.echo(f"QAT checkpoint {out} is already there; not trained again")
        return
    ds = ImageDataset(items, meta.preprocess, image_cache(out, cache_dir), augment=augment)
    _, result = qat_finetune(model, meta, ds, cfg, out, run_key=resume_key(want), identity=want)
    # What made the original, and the (unlabelled) photographs the distillation saw.
    record_images_seen(out, {"earlier": earlier_images(checkpoint), "qat": ds.digests})
    last = result["history"][-1] if result["history"] else {}
    click.echo(f"QAT checkpoint written to {out} (logit MSE under simulated INT8, last epoch: "
               f"{last.get('logit_mse', float('nan')):.5f})")
    click.echo("next: uopsl export, uopsl calibrate --method minmax, uopsl quantize --rounding nearest "
               "--no-bias-correction (what QAT simulated), then uopsl validate --checkpoint against the original")
