"""``uopsl demo``: the whole toolkit end to end on synthetic retinas."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

import click


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for data, checkpoints, bundle, report.")
@click.option("--quick", is_flag=True, help="Small pools and images (about 25 s on 2 idle CPU cores; its figures mean little).")
@click.option("--seed", type=int, default=0, show_default=True)
def command(out: Path, quick: bool, seed: int) -> None:
    """Synthetic data -> pre-training -> fine-tuning -> evaluation -> export -> INT8 -> parity -> screening report."""
    from dataclasses import replace

    from uopsl.train.demo import DemoConfig, run_demo

    cfg = replace(DemoConfig.quick() if quick else DemoConfig(), seed=seed)
    # What the release gate's report records as the command that made it (as `uopsl validate` does).
    res = run_demo(out, cfg, command=" ".join(["uopsl", *sys.argv[1:]]))
    auc = res["test_macro_auc"]
    if isinstance(auc, dict) and isinstance(auc.get("estimate"), float):
        n_boot, n_valid = res.get("evaluate_n_boot"), auc.get("n_valid")
        few = cast("list[str]", res.get("test_too_few_cases") or [])
        auc_s = f"{auc['estimate']:.3f}" + (
            f" (95 % CI {auc['low']:.3f}-{auc['high']:.3f}"
            # resamples without a positive or a negative of a class give no AUC: the interval is of the rest
            + (f", from the {n_valid} of {n_boot} resamples that define it" if isinstance(n_valid, int)
               and isinstance(n_boot, int) and n_valid < n_boot else "") + ")"
            if isinstance(auc.get("low"), float) else "") + (
            f" [too few test cases for {', '.join(few)}: a figure to read, not to quote]" if few else "")
    else:
        auc_s = str(auc)
    click.echo(f"demo finished in {res['total_seconds']} s: test macro AUC {auc_s}, "
               f"{res['screened']} photographs screened, {res['referred']} referred")
    # The sections run_demo writes (``res`` is typed dict[str, object]).
    conc = cast("dict[str, Any]", res.get("site_concentration") or {})
    if conc:
        from uopsl.train.evaluate import CONCENTRATION_LEGEND, concentration_summary

        click.echo(f"{CONCENTRATION_LEGEND}: {concentration_summary(conc)}")
    click.echo(f"report: {res['report']}")
    click.echo(f"bundle: {res['bundle']}")
    verdicts = cast("dict[str, str]", res.get("parity") or {})
    click.echo("parity vs the PyTorch model: " + ", ".join(f"{k} {v}" for k, v in verdicts.items())
               + f" ({res.get('parity_report')})")
    failures = cast("dict[str, list[str]]", res.get("parity_failures") or {})
    for name, lines in failures.items():
        click.echo(f"  {name}:")
        for line in lines:
            click.echo(f"    {line}")
