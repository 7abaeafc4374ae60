"""``uopsl evaluate``: clinical metrics with bootstrap intervals and a ROC plot."""

from __future__ import annotations

from pathlib import Path

import click

from uopsl.train.commands.common import items_for, load_source


@click.command("evaluate")
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--data", "data_spec", required=True, help="Test images, KIND:PATH[:opts] (forms: `uopsl --help`).")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--n-boot", type=click.IntRange(0), default=1000, show_default=True, help="Bootstrap resamples.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
def command(checkpoint: Path, data_spec: str, out: Path, n_boot: int, seed: int, device: str) -> None:
    """Per-class AUC, sensitivity/specificity at the stored thresholds, macro-F1, kappa; eval.json + roc.png."""
    from uopsl.train.checkpoint import read_meta
    from uopsl.train.workflow import run_evaluate

    names = read_meta(checkpoint).model.classes
    src = load_source(data_spec)
    # Site masks (synthetic data) travel as a sample extra, in the order items_for keeps.
    masks = [s.extra.get("masks") for s in src.samples if s.modality == "fundus"]
    report = run_evaluate(checkpoint, items_for(src, names, "fundus"), out, n_boot=n_boot, seed=seed,
                          cache=out / "cache", device=device, masks=masks if any(masks) else None)
    auc = report["macro"].get("auc", {})
    click.echo(f"macro AUC {auc.get('estimate')} (95% CI {auc.get('low')}-{auc.get('high')}); report in {out}/eval.json")
    if report.get("site_concentration"):
        parts = ", ".join(f"{n} {v['mean']:.2f}" for n, v in report["site_concentration"].items())
        click.echo(f"site concentration (attention mass in the true site mask / its area; 1 = chance): {parts}")
