"""``uopsl duplicates``: copies of one photograph inside a dataset, and whether a split keeps them apart."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from uopsl.runtime.clikit import FiniteFloatRange
from uopsl.runtime.fsio import write_text
from uopsl.train.commands.common import load_source


@click.command("duplicates")
@click.argument("specs", nargs=-1, required=True)
@click.option("--threshold", type=FiniteFloatRange(0.0, 1.0, min_open=True), default=0.9, show_default=True,
              help="Least signature correlation of two copies (0-1]; lower finds more, and more false pairs.")
@click.option("--folds", type=click.IntRange(2), default=None,
              help="Also say which copies the patient-grouped K folds (fold=I/K) put in different folds.")
@click.option("--fold-seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write the report as JSON here; not inside a bundle or checkpoint folder.")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path), default=None,
              help="Signature cache folder [default: the user cache folder ($UOPSL_CACHE_DIR, else $XDG_CACHE_HOME/uopsl, else ~/.cache/uopsl)/duplicates].")
def command(specs: tuple[str, ...], threshold: float, folds: int | None, fold_seed: int, out: Path | None,
            cache_dir: Path | None) -> int:
    """List the photographs of SPECS (datasets, KIND:PATH[:key=value,...]) that are copies of each other.

    A copy is found by content, not by name or bytes: re-encoded, resized,
    re-cropped, padded or re-toned copies of one photograph count (how
    reliably: docs/results.md, section 3, "Session 16 ...: copies of one photograph in TVHL"). Each set of copies is
    printed with the patient, eye and labels every copy is filed under, and
    flagged where those differ: copies under two patients leak across a
    patient-level split (the dataset option duplicates=0.9 keeps them on one
    side), copies with two labels are a labelling conflict.
    Exit 0 (copies or not), 2 on a usage or data error.
    """
    from uopsl.runtime.fsio import user_cache_dir
    from uopsl.train import data
    from uopsl.train.datasets.core import Sample
    from uopsl.train.datasets.duplicates import DuplicateConfig, find_duplicates

    if out is not None:  # before the photographs are read, not after
        from uopsl.runtime.fsio import check_output_file
        from uopsl.runtime.model_folders import check_output_outside_model_folders

        check_output_outside_model_folders(out, is_file=True)  # first: the next one writes a probe file
        check_output_file(out, "--out", "duplicates.json")
    cfg = DuplicateConfig(threshold=threshold)
    samples: list[Sample] = []
    sources = [load_source(spec) for spec in specs]
    where: dict[str, str] = {}  # real path -> the first spec that holds it
    for spec, src in zip(specs, sources):
        own = {os.path.realpath(s.path) for s in src.samples}
        common = own & where.keys()
        if common:
            # Overlapping specs (a set and its split=train part, one spec twice) made every shared photograph a
            # "copy" of itself; within one spec, a file listed twice is a real finding and stays.
            path = min(common)
            raise click.UsageError(f"{spec} and {where[path]} both hold {path} ({len(common)} photograph(s) in "
                                   "common): give specs that do not overlap (each photograph once)")
        where.update(dict.fromkeys(own, spec))
        samples.extend(src.samples)
    report = find_duplicates(samples, cfg, cache_dir or user_cache_dir() / "duplicates")
    fold_of: dict[int, int] = {}
    if folds is not None:  # the folds a spec's fold=I/K takes (each source's, as each spec draws its own)
        start = 0
        for src in sources:
            for f, (_, test_idx) in enumerate(data.spec_folds(src, folds, seed=fold_seed)):
                fold_of.update({start + int(i): f + 1 for i in test_idx})
            start += len(src)
    sim = {(c.a, c.b): c.similarity for c in report.pairs}
    groups: list[dict[str, Any]] = []
    for members in report.groups:
        patients = {samples[i].patient for i in members}
        eyes = {samples[i].eye for i in members if samples[i].eye is not None}
        labels = {samples[i].labels for i in members}
        flags = [name for name, hit in (("patients", len(patients) > 1), ("eyes", len(eyes) > 1),
                                        ("labels", len(labels) > 1)) if hit]
        entry: dict[str, Any] = {
            "flags": flags,
            "similarity_min": min(  # of the pairs that link the set (not every pair of it)
                v for (a, b), v in sim.items() if a in members and b in members),
            "members": [{"path": str(samples[i].path), "patient": samples[i].patient, "eye": samples[i].eye,
                         "labels": list(samples[i].labels), **({"fold": fold_of[i]} if fold_of else {})}
                        for i in members],
        }
        if fold_of:
            entry["folds_apart"] = len({fold_of[i] for i in members}) > 1
        groups.append(entry)
    summary = {
        "photographs": len(samples),
        "compared": len(samples) - len(report.skipped),
        "sets_of_copies": len(groups),
        "photographs_in_sets": sum(len(g["members"]) for g in groups),
        "sets_across_patients": sum("patients" in g["flags"] for g in groups),
        "sets_across_eyes": sum("eyes" in g["flags"] for g in groups),
        "sets_with_two_labels": sum("labels" in g["flags"] for g in groups),
        **({"sets_across_folds": sum(bool(g["folds_apart"]) for g in groups), "folds": folds,
            "fold_seed": fold_seed} if folds is not None else {}),
        "threshold": threshold,
    }
    for g in groups:
        click.echo(f"copies (linked pairs >= {g['similarity_min']:.3f})" + (f"  [differ in: {', '.join(g['flags'])}]"
                                                                             if g["flags"] else ""))
        for m in g["members"]:
            fold = f"  fold {m['fold']}" if "fold" in m else ""
            click.echo(f"  {m['path']}  patient {m['patient']}  eye {m['eye']}  {'+'.join(m['labels']) or '-'}{fold}")
    skipped = [{"path": str(samples[i].path), "why": why} for i, why in report.skipped.items()]
    click.echo(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in summary.items()))
    if skipped:
        click.echo(f"{len(skipped)} photograph(s) not compared (first: {skipped[0]['path']}: {skipped[0]['why']})")
    if out is not None:
        write_text(out, json.dumps({"summary": summary, "groups": groups, "skipped": skipped}, indent=1) + "\n")
    return 0
