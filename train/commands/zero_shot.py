"""``uopsl zero-shot``: classify into classes given only by name and description."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from uopsl.runtime.errors import ConfigError, UopslError
from uopsl.runtime.model_folders import check_output_outside_model_folders
from uopsl.train.commands.common import check_out_outside_data, items_for, load_source, split_classes

log = logging.getLogger(__name__)


@click.command("zero-shot")
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--data", "data_spec", required=True, help="Labelled test images, KIND:PATH[:opts] (forms: `uopsl --help`).")
@click.option("--classes", required=True,
              help="Comma-separated class names (built-in or from --classes-file); a class the checkpoint was "
                   "trained on, or a label of the data, under another spelling or alias (DR, healthy) is that class.")
@click.option("--classes-file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="TOML/JSON file describing new classes (name + phrases).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Report folder (zero_shot.json, and cache/: a small preprocessed copy of every photograph "
                   "scored, kept for reruns; leave it out when sharing the report); not inside a bundle or "
                   "checkpoint folder.")
@click.option("--text-model", default=None,
              help="The sentence encoder that made CHECKPOINT, for a checkpoint that does not record it (checked).")
@click.option("--n-boot", type=click.IntRange(100, 100_000), default=1000, show_default=True,
              help="Bootstrap resamples for the interval of each with/without-sites difference.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap resamples.")
@click.option("--keep-ungradable", is_flag=True,
              help="Score photographs the runtime's quality gate calls ungradable too. By default they are left out "
                   "(a device gives no decision on them) and listed in zero_shot.json, as uopsl evaluate and "
                   "validate do.")
def command(checkpoint: Path, data_spec: str, classes: str, classes_file: Path | None, out: Path,
            text_model: str | None, n_boot: int, seed: int, keep_ungradable: bool) -> None:
    """AUC per class with site attention and without it (the 'plain CLIP' reading).

    Two readings (the class description alone; against the healthy class's
    description) and two sets of negatives (every other image; healthy eyes
    only), each with/without-sites difference with a 95 % paired bootstrap
    interval and DeLong's p. Everything goes to OUT/zero_shot.json.
    """
    from uopsl.train.workflow import run_zero_shot

    import numpy as np

    from uopsl.train.evaluate import class_coverage

    check_output_outside_model_folders(out)  # before the data are read
    given = given_classes(classes)
    src = load_source(data_spec)
    check_out_outside_data(out, src)
    _refuse_without_fundus(data_spec, [s.modality for s in src.samples])
    labelled = sorted({n for s in src.samples if s.modality == "fundus" for n in s.labels})
    described: tuple[str, ...] = ()
    if classes_file is not None:
        from uopsl.train.descriptions import class_names

        described = class_names(classes_file)
    names = resolve_names(given, _trained_classes(checkpoint), labelled, described)
    items = items_for(src, names, "fundus", by_canonical_name=True)
    cov = class_coverage(np.stack([it.target for it in items]) if items else np.zeros((0, len(names))), names)
    if not cov.evaluated:  # before the model runs: an empty table says nothing
        raise ConfigError(f"{data_spec} has no class of --classes with both positive and negative photographs "
                          f"({', '.join(f'{n}: {why}' for n, why in cov.left_out.items())}); its labels are "
                          f"{', '.join(labelled) or 'none'}: give data labelled with the classes to score")
    if classes_file is not None:
        _note_unused_class_file_entries(classes_file, names)
    res = run_zero_shot(checkpoint, items, names, out, classes_file, cache=out / "cache", n_boot=n_boot,
                        text_model=text_model, seed=seed, keep_ungradable=keep_ungradable)
    for n in names:
        if res["site_attention"][n] is None:
            click.echo(f"{n:>14}: AUC undefined (the data has no image with, or none without, this class)")
    click.echo(_table(res["readings"], names, res.get("healthy_class")))


def given_classes(value: str) -> tuple[str, ...]:
    """The ``--classes`` names, refusing none at all and a class file given in their place.

    Why: ``--classes ","`` was told to "leave the option out for every class", which zero-shot requires; and
    ``--classes cf/new.toml`` was read as the name of a class no photograph is labelled with (a review).
    """
    if not [v for v in value.split(",") if v.strip()]:
        raise ConfigError(f"--classes {value!r} names no class; zero-shot needs the classes to score: give their "
                          "names, comma-separated (e.g. --classes normal,dr,dme)")
    names = split_classes(value) or ()
    # By its form only: a class named dr stays a class where a file named dr lies in the working folder.
    files = [n for n in names if n.lower().endswith((".toml", ".json")) or ("/" in n or "\\" in n)
             and Path(n).is_file()]
    if files:
        raise ConfigError(f"--classes takes class names, not a file ({', '.join(repr(f) for f in files)}): pass "
                          f"the class file as --classes-file {files[0]} and list the classes to score in --classes "
                          "(e.g. --classes normal,NEW_CLASS)")
    return names


def _refuse_without_fundus(data_spec: str, modalities: Sequence[str]) -> None:
    """Refuse data with no fundus photograph, before the model runs; note OCT scans left out of mixed data.

    Why: zero-shot scores fundus photographs; an OCT-only spec was read ("72 oct") and then failed with "normal:
    no positive image in the data", which blamed the labels (a review).
    """
    n_oct = sum(1 for m in modalities if m == "oct")
    n_fundus = sum(1 for m in modalities if m == "fundus")
    if n_oct and not n_fundus:
        raise ConfigError(f"zero-shot scores fundus photographs, and {data_spec} holds {n_oct} OCT scan(s) and no "
                          "fundus photograph: give a data spec of labelled fundus photographs (tvhl: modality=fundus, "
                          "the default; a CSV: modality column 'fundus')")
    if n_oct and n_fundus:
        log.info("%s: %d OCT scan(s) are left out (zero-shot scores the %d fundus photograph(s))", data_spec, n_oct,
                 n_fundus)


def _note_unused_class_file_entries(classes_file: Path, names: Sequence[str]) -> None:
    """Say what of the class file zero-shot does not use: operating points (AUCs need none; ``uopsl export
    --classes`` uses them) and classes left out of ``--classes``. A review found them ignored without a word."""
    from uopsl.train.descriptions import canonical, class_names, load_operating_points

    points = load_operating_points(classes_file)
    if points:
        log.info("%s: the threshold and referable keys (%s) are not used here: zero-shot reports AUCs, which "
                 "need no operating point (uopsl export --classes uses them)", classes_file, ", ".join(points))
    wanted = {canonical(n) for n in names}
    unused = [n for n in class_names(classes_file) if canonical(n) not in wanted]
    if unused:
        log.info("%s describes classes not in --classes, not scored: %s", classes_file, ", ".join(unused))


def _trained_classes(checkpoint: Path) -> tuple[str, ...]:
    """The checkpoint's classes; none when it cannot be read (loading it says why, with the model)."""
    from uopsl.train.checkpoint import read_meta

    try:
        return tuple(read_meta(checkpoint).model.classes)
    except UopslError:
        return ()


def resolve_names(given: Sequence[str], trained: Sequence[str], labelled: Sequence[str],
                  described: Sequence[str] = ()) -> tuple[str, ...]:
    """Each ``--classes`` name as the checkpoint spells it when it is a trained class under any spelling or
    alias (``DR``, ``diabetic retinopathy`` and ``dr`` are one class), else as the class file names it
    (``described``, canonical names), else as the data spell it, else by its built-in name, else as given.

    Why: matched as typed, a trained class under another spelling was scored as a new zero-shot class (its
    trained prototype and bias left out) and its labelled photographs were not found: "AUC undefined", exit 0.
    And a new class under two spellings (``coats,Coats``) was scored twice, as two classes.
    """
    from uopsl.train.descriptions import canonical, names as builtin_names

    trained_by = {canonical(t): t for t in trained}
    file_by = {canonical(n): n for n in described}
    data_by = {canonical(n): n for n in labelled}
    builtin_by = {n: n for n in builtin_names()}
    out = []
    for name in given:
        key = canonical(name)
        resolved = (trained_by.get(key) or file_by.get(key) or data_by.get(key) or builtin_by.get(key)
                    or name)
        if resolved != name:
            log.info("--classes %r is the class %r%s", name, resolved,
                     " the checkpoint was trained on" if key in trained_by else
                     " of the class file" if key in file_by else " of the data" if key in data_by else "")
        out.append(resolved)
    keys = [canonical(n) for n in out]  # one class under two spellings that resolve apart ('xyz', 'XYZ') too
    twice = sorted({out[keys.index(k)] for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(f"--classes names {', '.join(repr(n) for n in twice)} more than once (under other "
                          f"spellings: {', '.join(repr(g) for g, k in zip(given, keys) if keys.count(k) > 1)}); "
                          "give each class once")
    missing = [n for n in out if canonical(n) not in data_by]
    if missing:
        log.warning("no photograph of the data is labelled %s (under any spelling); its labels are %s: %s AUC "
                    "cannot be computed", ", ".join(repr(n) for n in missing), ", ".join(labelled) or "none",
                    "their" if len(missing) > 1 else "its")
    return tuple(out)


def _p(p: float | None) -> str:
    if p is None:  # DeLong's variance estimate was zero (tiny or degenerate samples): no p-value, not p = 0
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _table(readings: dict[str, Any], names: tuple[str, ...] | list[str], healthy: str | None) -> str:
    """The readings as a plain-text table: one row per class, reading and set of negatives."""
    labels = {"raw": "description", "vs_healthy": f"vs {healthy}"}
    rows = []
    for n in names:
        for reading, by_negatives in readings.items():
            for negatives, block in by_negatives.items():
                row = block.get(n)
                if row is None or row["with_sites"] is None:
                    continue
                lo, hi = row["difference_ci95"]
                ci = "undefined" if lo is None or hi is None else f"[{lo:+.3f}, {hi:+.3f}]"
                small = " (small n)" if row.get("small_sample") else ""
                rows.append((n, labels[reading], ("all" if negatives == "all" else f"{healthy} only") + small,
                             f"{row['with_sites']:.4f}", f"{row['without']:.4f}", f"{row['difference']:+.4f}", ci,
                             _p(row["delong_p"])))
    header = ("class", "reading", "negatives", "with sites", "without", "difference", "95 % CI", "DeLong p")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    align = ("<", "<", "<", ">", ">", ">", "<", ">")
    lines = ["  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(r, align, widths)).rstrip() for r in [header, *rows]]
    if healthy is None:
        lines.append("(no healthy class in the bank: only the description reading, every other image a negative)")
    if any(" (small n)" in r[2] for r in rows):
        lines.append("(small n: fewer than 10 images with, or without, the class; read the interval, not the p-value)")
    return "\n".join(lines)
