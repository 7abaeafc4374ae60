"""``uopsl export``: fold a checkpoint into ONNX and write a deployment bundle."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Bundle folder to write.")
@click.option("--classes", "classes_file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Re-export with a new class bank (TOML/JSON: names + descriptions), without retraining. One class "
                   "exports for a sigmoid model only (a softmax's one probability is always 1).")
@click.option("--opset", type=click.IntRange(14, 20), default=17, show_default=True,
              help="ONNX opset. Above 17 the file does not parse on TensorRT 8.x (JetPack 6.0, desktop 8.5/8.6).")
@click.option("--triton", type=click.Path(path_type=Path), default=None,
              help="Also write a Triton Inference Server model repository here (FP32 only: after quantize, "
                   "build-engine and validate, `uopsl triton BUNDLE --out DIR` serves those files too).")
@click.option("--force", is_flag=True,
              help="Replace an existing bundle folder (refused when it also holds files its manifest does not "
                   "list, which replacing it would delete: they are named).")
@click.option("--intended-use", type=click.Choice(["research", "clinical", "demonstration"]), default=None,
              help="What the model may be used for; every report and run shows it (default: demonstration for a "
                   "model trained on synthetic photographs only, else research). 'clinical' states that you "
                   "validated it for the use --use-statement describes (the toolkit records, it does not check).")
@click.option("--use-statement", default="",
              help="Your statement of the intended use: population, cameras, the validation and where its evidence "
                   "is (required with --intended-use clinical; shown on every report page).")
@click.option("--trained-on", default="",
              help="What the model was trained on, in a few words (default: what the checkpoint records of each "
                   "training stage's data).")
@click.option("--text-model", default=None,
              help="With --classes: the sentence encoder that made CHECKPOINT, for a checkpoint that does not "
                   "record it (checked).")
def command(checkpoint: Path, out: Path, classes_file: Path | None, opset: int, triton: Path | None, force: bool,
            intended_use: str | None, use_statement: str, trained_on: str, text_model: str | None) -> None:
    """Export CHECKPOINT to a bundle (model.onnx, class_bank.npy, manifest.json with checksums)."""
    from uopsl.runtime.bundle import verify_or_raise
    from uopsl.runtime.intended_use import check_choice
    from uopsl.train.workflow import run_export

    if intended_use is not None:
        check_choice(intended_use, use_statement, trained_on)  # a missing statement stops here, before any loading

    if text_model is not None and classes_file is None:
        raise click.UsageError("--text-model names the encoder that encodes the descriptions of --classes; "
                               "without --classes nothing is encoded: drop it, or add --classes FILE")
    if triton is not None:  # refuse an unusable repository path before exporting, not after
        from uopsl.export.triton import check_repository_target

        t, o = triton.resolve(), out.resolve()
        if t == o or o in t.parents:
            raise click.UsageError(f"--triton {triton} is --out {out} or inside it: the bundle folder holds the bundle "
                                   "alone (its manifest lists every file); choose a repository folder beside it")
        check_repository_target(triton, force, keep=(("the bundle", out), ("the checkpoint", checkpoint)))
    bundle = run_export(checkpoint, out, classes_file, opset, force, text_model=text_model, use_status=intended_use,
                        use_statement=use_statement, trained_on=trained_on)
    m = verify_or_raise(bundle)
    click.echo(f"bundle {bundle}: {len(m.classes)} classes, {len(m.files)} files verified")
    if triton is not None:
        from uopsl.export.triton import write_triton_repository

        repo = write_triton_repository(bundle, triton, overwrite=force)
        click.echo(f"Triton model repository written to {repo}")
