"""``uopsl demo``: the whole toolkit end to end on synthetic retinas."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for data, checkpoints, bundle, report.")
@click.option("--quick", is_flag=True, help="Small pools and images (about 3 minutes on 2 CPU cores).")
@click.option("--seed", type=int, default=0, show_default=True)
def command(out: Path, quick: bool, seed: int) -> None:
    """Synthetic data -> pre-training -> fine-tuning -> evaluation -> export -> INT8 -> parity -> screening report."""
    from dataclasses import replace

    from uopsl.train.demo import DemoConfig, run_demo

    cfg = replace(DemoConfig.quick() if quick else DemoConfig(), seed=seed)
    res = run_demo(out, cfg)
    auc = res["test_macro_auc"]
    if isinstance(auc, dict) and isinstance(auc.get("estimate"), float):
        auc_s = f"{auc['estimate']:.3f}" + (f" (95 % CI {auc['low']:.3f}-{auc['high']:.3f})"
                                            if isinstance(auc.get("low"), float) else "")
    else:
        auc_s = str(auc)
    click.echo(f"demo finished in {res['total_seconds']} s: test macro AUC {auc_s}, "
               f"{res['screened']} photographs screened, {res['referred']} referred")
    conc = res.get("site_concentration") or {}
    if conc:
        click.echo("site concentration (mass in the true site mask / its area; 1 = chance): "
                   + ", ".join(f"{k} {v:.2f}" for k, v in conc.items()))  # type: ignore[union-attr]
    click.echo(f"report: {res['report']}")
    click.echo(f"bundle: {res['bundle']}")
    verdicts = res.get("parity") or {}
    click.echo("parity vs the PyTorch model: " + ", ".join(f"{k} {v}" for k, v in verdicts.items())  # type: ignore[union-attr]
               + f" ({res.get('parity_report')})")
    for name, lines in (res.get("parity_failures") or {}).items():  # type: ignore[union-attr]
        click.echo(f"  {name}:")
        for line in lines:
            click.echo(f"    {line}")
