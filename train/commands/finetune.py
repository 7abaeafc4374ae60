"""``uopsl finetune``: stage 2, fundus-only fine-tuning with site cross-attention."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from uopsl.runtime.clikit import FiniteFloatRange, speaks_for_the_run
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import write_json
from uopsl.train import data as datamod
from uopsl.train.commands.common import (INIT_HELP, check_classes_in_data, check_out_folder, image_cache, items_for,
                                         load_source, refuse_unused_options, refuse_without_fundus, resolve_init,
                                         say_unknown_patients, split_classes, train_options)


@click.command("finetune")
@click.option("--data", "data_spec", required=True, help="Fundus training images, KIND:PATH[:opts] (forms: `uopsl --help`).")
@click.option("--val", "val_spec", default=None,
              help="Validation images (operating thresholds and model selection). Default: 15 % of --data's "
                   "patients. Refused when it shares image files, or patients of the same dataset (one dataset "
                   "folder, or images in a common folder), with --data.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--from", "from_ckpt", type=click.Path(path_type=Path, exists=True), default=None,
              help="Pre-trained checkpoint to start from (else a fresh model).")
@click.option("--classes", default=None, help="Comma-separated class names (default: the data's classes).")
@click.option("--classes-file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="TOML/JSON file describing classes the built-in dictionary lacks (name + phrases).")
@click.option("--text-model", default=None,
              help="Sentence encoder of a new model: the packaged default or a local sentence-transformers "
                   "folder. With --from, only to name the encoder that made that checkpoint (checked).")
@click.option("--variant", type=click.Choice(["uopsl", "p_only", "fundus_only"]), default=None,
              help="For a fresh model (default uopsl); must match a --from checkpoint.")
@click.option("--backbone", default="efficientnet_lite0",
              help="Encoder of a fresh model: resnet18, resnet50, mobilenet_v3_large, efficientnet_b0, "
                   "efficientnet_lite0/1/2 (default efficientnet_lite0). With --from: the checkpoint's (another "
                   "is refused).")
@click.option("--init", default="imagenet", help=INIT_HELP + " Fresh models only (default imagenet); refused with --from.")
@click.option("--size", type=click.IntRange(64, 1024), default=320,
              help="Model input side in pixels, 64-1024 (default 320). With --from: the checkpoint's (another "
                   "value is refused).")
@click.option("--freeze-sites", is_flag=True, help="Keep P, G and the site attention fixed (the site guide is then off).")
@click.option("--site-loss", "w_site_finetune", type=FiniteFloatRange(0.0), default=0.0, show_default=True,
              help="Weight of the site loss on fundus tokens (each class's site-pooled feature alone must score "
                   "the image's classes); 0: fused classification only.")
@click.option("--site-guide", "w_site_guide", type=FiniteFloatRange(0.0), default=1.0, show_default=True,
              help="Weight of the site guide: each present class's site map follows where the classifier's "
                   "global projection finds that class's evidence against a healthy retina (docs/method.md); "
                   "0: off (the published recipe).")
@click.option("--shots", type=click.IntRange(1), default=None, help="Use only N labelled images per class.")
@click.option("--target-sensitivity", type=FiniteFloatRange(0.5, 1.0), default=0.9, show_default=True,
              help="Operating point of referable classes, chosen on the validation images.")
@train_options
def command(data_spec: str, val_spec: str | None, out: Path, from_ckpt: Path | None, classes: str | None,
            classes_file: Path | None, text_model: str | None, variant: str | None, backbone: str, init: str, size: int, freeze_sites: bool, w_site_finetune: float, w_site_guide: float,
            shots: int | None,
            target_sensitivity: float, seed: int, cache_dir: Path | None, **train: object) -> None:
    """Fine-tune on fundus photographs; writes the checkpoint with its operating thresholds."""
    from uopsl.train.loops import TrainConfig, pick_device
    from uopsl.train.stages import effective_finetune_config
    from uopsl.train.text import DEFAULT_MODEL as DEFAULT_TEXT_MODEL
    from uopsl.train.workflow import (LEARNT_ROLES, data_record, earlier_images, finished_run, from_checkpoint,
                                      new_model, operating_identity, run_finetune, run_identity, with_training_data)

    check_out_folder(out, cache_dir)
    src = load_source(data_spec)
    fundus = [i for i, smp in enumerate(src.samples) if smp.modality == "fundus"]
    refuse_without_fundus(src, data_spec, "--data", len(fundus))
    if len(fundus) < len(src.samples):  # stage 2 reads fundus only: split and count those
        src = src.subset(fundus, f"{src.name}[fundus]")
    if val_spec:
        val = load_source(val_spec)
        refuse_without_fundus(val, val_spec, "--val", sum(smp.modality == "fundus" for smp in val.samples))
        datamod.check_apart(src, val, "--val")
    else:
        say_unknown_patients(data_spec, src, "finetune's validation part (about 15 % of --data's photographs, whole patients) takes")
        # A spec's duplicates= holds for this split too: copies of one photograph stay on one side.
        parts = datamod.patient_split(src.samples, fractions=(0.85, 0.15, 0.0), seed=seed, links=src.links or None)
        val, src = src.subset(parts.val, f"{src.name}[val]"), src.subset(parts.train, f"{src.name}[train]")
    if shots:
        src = src.subset(datamod.take_shots(src.samples, shots, seed=seed), f"{src.name}[{shots}-shot]")
    names = split_classes(classes) or src.label_space.classes
    check_classes_in_data([(src, "fundus")], names, held_out=[(val, "fundus")], named=bool(split_classes(classes)))
    cfg = TrainConfig(freeze_sites=freeze_sites, w_site_finetune=w_site_finetune, w_site_guide=w_site_guide,
                      seed=seed, **train)  # type: ignore[arg-type]  # click checked each option's type
    pick_device(cfg.device)  # a device that is not there stops here, before anything is written
    if from_ckpt:
        # With --from, --text-model only names the encoder that made the checkpoint (checked, see text_model_of).
        model, meta = from_checkpoint(from_ckpt, names, variant=variant, classes_file=classes_file,
                                      text_model=text_model)
        # The checkpoint's fingerprint is of the data it was trained on (pre-training's); this model's classifier
        # is made from --data (every stage's data stays listed in meta.training_data).
        meta = replace(meta, data_fingerprint=src.fingerprint)
        ctx = click.get_current_context()

        def given(name: str) -> bool:
            source = ctx.get_parameter_source(name)
            return source is not None and source.name == "COMMANDLINE"

        if given("size") and size != meta.preprocess.size:
            raise ConfigError(f"--size {size} differs from {from_ckpt}'s input size {meta.preprocess.size}; "
                              "fine-tuning keeps the checkpoint's size (omit --size, or pretrain at that size)")
        # The checkpoint's encoder and weights are what fine-tuning starts from: these would be ignored.
        if given("backbone") and backbone != meta.model.backbone:
            raise ConfigError(f"--backbone {backbone} differs from {from_ckpt}'s encoder {meta.model.backbone}; "
                              "fine-tuning keeps the checkpoint's encoder (omit --backbone)")
        if given("init"):
            raise ConfigError(f"--init {init} with --from: the weights come from {from_ckpt}; omit --init (it "
                              "chooses the first weights of a fresh model)")
    else:
        init = resolve_init(backbone, init)
        model, meta = new_model(names, variant=variant or "uopsl", backbone=backbone, init=init, size=size,
                                text_model=text_model or DEFAULT_TEXT_MODEL, classes_file=classes_file,
                                data_fingerprint=src.fingerprint, seed=seed)
    refuse_unused_options(out, {**train, "w_site_finetune": w_site_finetune, "w_site_guide": w_site_guide,
                                 "freeze_sites": freeze_sites}, model.config.variant)
    # The validation images choose the operating thresholds: recorded too (they teach no class).
    meta = with_training_data(meta, data_record("finetune", src, "fundus"),
                              *([data_record("validation", val, "fundus")] if val.samples else []))
    train_items, val_items = items_for(src, names, "fundus"), items_for(val, names, "fundus")
    # Before anything is written: a folder holding another run's finished model is refused, not overwritten.
    want = {**run_identity("finetune", effective_finetune_config(cfg, model), model, train_items, val_items),
            "operating": operating_identity(target_sensitivity, meta.referable)}
    # An interrupted run keeps the config it started with: resumed, its settings are these; refused (other
    # settings), the file must still describe what was trained.
    settings = effective_finetune_config(cfg, model).to_dict()
    reused = finished_run(out, "finetune", want, settings, meta.preprocess)
    if not reused and not (out / "state.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "finetune.config.json", {"data": src.describe(), "val": val.describe(),
                                                  "from": str(from_ckpt), "model": meta.model.to_dict(),
                                                  "train": cfg.to_dict(), "shots": shots,
                                                  "text_model": meta.text_model,
                                                  "classes_file": str(classes_file) if classes_file else None})
    _, meta = run_finetune(model, meta, train_items, val_items, cfg, out, image_cache(out, cache_dir),
                           target_sensitivity, identity=want,
                           seen_before=earlier_images(from_ckpt) if from_ckpt else (),
                           learnt_before=earlier_images(from_ckpt, LEARNT_ROLES) if from_ckpt else ())
    if not speaks_for_the_run():  # under torchrun rank 0 says it once
        return
    shown = ", ".join(f"{n} {t:.3f}" for n, t in zip(names, meta.thresholds))
    click.echo(f"fine-tuned model {'already complete in' if reused else 'written to'} {out} (thresholds: {shown})")
    for op in meta.metrics.get("operating_points") or []:  # what each threshold achieved on the validation images
        if op.get("method") in ("target_sensitivity", "youden"):
            click.echo(f"  {op['name']}: {op['method'].replace('_', ' ')}, on {op['n_positive']} + {op['n_negative']} "
                       f"validation images sensitivity {_rate(op.get('sensitivity'))}, specificity "
                       f"{_rate(op.get('specificity'))}" + (f" ({op['note']})" if "not a useful" in op.get("note", "")
                                                            else ""))
        else:
            click.echo(f"  {op['name']}: {op.get('note') or op.get('method')}")


def _rate(x: object) -> str:
    return f"{x:.3f}" if isinstance(x, float) else "n/a"
