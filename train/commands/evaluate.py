"""``uopsl evaluate``: clinical metrics with bootstrap intervals and a ROC plot."""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections import Counter
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from uopsl.runtime.errors import ConfigError
from uopsl.runtime.model_folders import check_output_outside_model_folders
from uopsl.train.commands.common import check_out_outside_data, items_for, load_source, modality_counts

if TYPE_CHECKING:
    from uopsl.train.evaluate import ClassCoverage


log = logging.getLogger(__name__)


def check_coverage(cov: ClassCoverage, data_spec: str, checkpoint: Path, data_classes: list[str],
                   quiet: bool = False) -> None:
    """Warn when the data leave model classes out or hold classes the model lacks; refuse when <= 1 is left.

    Why: the macro figures are means over the classes the data can evaluate
    (positives and negatives present). Model classes without positives and
    data labels the model does not know used to be dropped without a word,
    and "macro AUC" then meant the AUC of ``normal`` alone.
    """
    problems = cov.problems()
    spelled = spelling_pairs(cov.model_classes, data_classes)
    if spelled:  # class names are matched as written; the descriptions are looked up however they are spelled
        problems = (f"{problems}; " if problems else "") + (
            "named differently only in spelling or case: " + ", ".join(f"{d!r} (data) is {m!r} (model)"
                                                                    for m, d in spelled)
            + " - relabel the data with the model's names")
    if cov.usable():
        if problems and not quiet:
            log.warning("%s on %s: %s; the macro figures cover %s", checkpoint, data_spec, problems, cov.summary())
        return
    from uopsl.train.commands.validate import task_hint

    hint = task_hint(data_spec, cov.model_classes)
    raise ConfigError(
        f"{data_spec} cannot evaluate {checkpoint}: it covers {cov.summary()}; the model's classes are "
        f"{', '.join(cov.model_classes)}, the data's {', '.join(data_classes) or 'none'}"
        f"{'; ' + problems if problems else ''}. "
        + f"Evaluate on data labelled with the model's classes{': ' + hint if hint else ''}"
    )


def spelling_pairs(model_classes: Sequence[str], data_classes: Sequence[str]) -> list[tuple[str, str]]:
    """(model class, data class) pairs that differ only in case or spelling (``NORMAL`` and ``normal``)."""
    from uopsl.train.descriptions import canonical

    by_key = {canonical(m): m for m in model_classes}
    return [(by_key[canonical(d)], d) for d in data_classes
            if d not in model_classes and canonical(d) in by_key and by_key[canonical(d)] != d]


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _interval(figure: dict[str, Any], label: str = "95% CI ") -> str:
    """`` (95% CI 0.812-0.901)``, or nothing where no interval was drawn (``--n-boot 0``, too few images)."""
    low, high = figure.get("low"), figure.get("high")
    return "" if low is None or high is None else f" ({label}{_fmt(low)}-{_fmt(high)})"


@click.command("evaluate")
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--data", "data_spec", required=True, help="Test images, KIND:PATH[:opts] (forms: `uopsl --help`).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Report folder (eval.json, roc.png, predictions.csv, and cache/: a small preprocessed copy of "
                   "every photograph evaluated, kept for reruns; leave it out when sharing the report); not inside "
                   "a bundle or checkpoint folder.")
@click.option("--n-boot", type=click.IntRange(0), default=1000, show_default=True, help="Bootstrap resamples.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--keep-ungradable", is_flag=True,
              help="Score photographs the runtime's quality gate calls ungradable too. By default they are left out "
                   "(a device gives no decision on them) and listed in eval.json, as uopsl validate does.")
def command(checkpoint: Path, data_spec: str, out: Path, n_boot: int, seed: int, device: str,
            keep_ungradable: bool) -> int:
    """Per-class AUC, sensitivity/specificity at the stored thresholds, F1 per class at its threshold and their
    mean (macro-F1), quadratic kappa for a softmax head over DR grades; eval.json, roc.png and predictions.csv.
    Photographs are taken as uopsl validate takes them: a byte-identical copy once, and those the runtime's
    quality gate calls ungradable left out (eval.json's data.screened lists both).
    A class the data do not grade (TVHL's amd) is not evaluated, nor the referral call unless every referable
    class is graded; a class with fewer than 10 positive or negative patients (images when patients are
    unknown) is flagged too_few_cases.
    eval.json records the data spec, each image's sha256, the checkpoint's weights sha256, versions, device,
    command and date, and held_out (false when evaluated photographs made the checkpoint).

    Exit 0; 1 when some images could not be read (left out of every figure; eval.json lists them); 2 for a
    usage or data error.
    """
    import numpy as np

    from uopsl.train.checkpoint import read_meta
    from uopsl.train.commands.validate import declared_classes
    from uopsl.train.evaluate import ClassCoverage, class_coverage
    from uopsl.train.workflow import run_evaluate

    check_output_outside_model_folders(out)  # before the checkpoint and the data are read
    names = read_meta(checkpoint).model.classes
    src = load_source(data_spec)
    check_out_outside_data(out, src)
    # The classes these data grade, as validate takes them: a model class outside them is not evaluated (an
    # image without its label is no negative: TVHL grades DR, not AMD), nor the referral call without them all.
    space = declared_classes(src)
    items = items_for(src, names, "fundus")
    # Before the model runs: which of its classes these data can evaluate (eval.json records it again, after
    # unreadable images are dropped).
    if not items:
        raise ConfigError(f"{data_spec} holds no fundus photographs to evaluate ({modality_counts(src)})")
    counts = Counter(n for s in src.samples if s.modality == "fundus" for n in s.labels)
    cov = class_coverage(np.stack([it.target for it in items]), names, dict(counts), label_space=space)
    check_coverage(cov, data_spec, checkpoint, [c for c in src.label_space.classes if counts.get(c)]
                   + sorted(c for c in counts if c not in src.label_space.classes))
    # Site masks (synthetic data) travel as a sample extra, in the order items_for keeps.
    masks = [s.extra.get("masks") for s in src.samples if s.modality == "fundus"]
    data_classes = ([c for c in src.label_space.classes if counts.get(c)]
                    + sorted(c for c in counts if c not in src.label_space.classes))

    def readable_cover_enough(readable: ClassCoverage) -> None:  # unreadable images may have taken a class away
        check_coverage(dataclasses.replace(readable, data_only=cov.data_only), data_spec, checkpoint, data_classes,
                       quiet=True)

    context = {"command": " ".join(["uopsl", *sys.argv[1:]]) if sys.argv else "", "data": data_spec,
               "data_fingerprint": src.fingerprint}
    report = run_evaluate(checkpoint, items, out, n_boot=n_boot, seed=seed, cache=out / "cache", device=device,
                          masks=masks if any(masks) else None, check=readable_cover_enough, data_counts=dict(counts),
                          label_space=space, context=context, keep_ungradable=keep_ungradable)
    final = class_coverage_from_report(report, cov)
    auc = report["macro"].get("auc", {})
    click.echo(f"macro AUC over {final.summary()}: {_fmt(auc.get('estimate'))}{_interval(auc)}; "
               f"report in {out}/eval.json")
    ref = report.get("referral") or {}
    if ref.get("applicable"):  # the call the device makes: any referable class at its threshold
        sens, spec = ref["sensitivity"], ref["specificity"]
        click.echo(f"referral ({' or '.join(ref['referable_classes'])} at its threshold; {ref['n_positive']} "
                   f"referable, {ref['n_negative']} not): sensitivity {_fmt(sens.get('estimate'))}"
                   f"{_interval(sens, '')}, specificity {_fmt(spec.get('estimate'))}{_interval(spec, '')}"
                   + (" [too few cases]" if ref.get("too_few_cases") else ""))
    elif ref.get("not_evaluated"):
        click.echo(f"referral ({' or '.join(ref['referable_classes'])} at its threshold): not evaluated, "
                   f"{ref['not_evaluated']}; it refers {ref.get('referred')} of {ref.get('n_images')} photographs")
    if report.get("site_concentration"):
        from uopsl.train.evaluate import CONCENTRATION_LEGEND, concentration_summary

        click.echo(f"{CONCENTRATION_LEGEND}: {concentration_summary(report['site_concentration'])}")
    for line in class_lines(report):
        click.echo(line)
    lost = int(report.get("n_unreadable") or 0)
    if lost:
        # Figures to be signed must not silently cover fewer images than the data listed (explain and
        # uopsl-screen run exit 1 for the same); the figures stand for the images that were read.
        click.echo(f"{lost} of the {len(items)} images could not be read and are left out of every figure above "
                   f"(eval.json lists them under 'unreadable'); fix or remove them and evaluate again", err=True)
        return 1
    return 0


def thresholds_origin(report: dict[str, Any]) -> str:
    """Where the thresholds the figures use came from, in a few words: eval.json's ``operating_points`` (how
    training chose each), else its ``thresholds_from``."""
    points = [r for r in report.get("operating_points") or [] if isinstance(r, dict)]
    if not points or all(r.get("method") == "default" for r in points):
        return str(report.get("thresholds_from") or "from the checkpoint")
    words = {"target_sensitivity": "target sensitivity {t:.2f}", "youden": "Youden's J",
             "fallback": "fallback 0.5, none could be chosen", "default": "0.5, no validation images"}
    groups: dict[str, list[str]] = {}
    for r in points:
        key = words.get(str(r.get("method")), str(r.get("method"))).format(t=r.get("target_sensitivity") or 0.0)
        groups.setdefault(key, []).append(str(r.get("name")))
    how = "; ".join(f"{', '.join(n)}: {k}" for k, n in groups.items())
    return f"chosen on the checkpoint's validation photographs at training time ({how})"


def class_lines(report: dict[str, Any]) -> list[str]:
    """The per-class summary: n+/n- (patients when known), sensitivity and specificity at each threshold,
    where the thresholds came from; classes the data do not grade and those with too few cases said so."""
    rows = [c for c in report.get("classes", []) if isinstance(c, dict)]
    if not rows:
        return []
    width = max(len(str(c.get("name"))) for c in rows)
    out = [f"per class at its threshold, thresholds {thresholds_origin(report)}:"]
    for c in rows:
        name = str(c.get("name")).ljust(width)
        if c.get("labelled") is False:
            out.append(f"  {name}  not evaluated: {c.get('not_evaluated')}")
            continue
        n = f"n+ {c.get('n_positive')}/n- {c.get('n_negative')}"
        if c.get("n_positive_patients") is not None:
            n += f" ({c['n_positive_patients']}/{c['n_negative_patients']} patients)"
        sens = (c.get("sensitivity") or {}).get("estimate")
        spec = (c.get("specificity") or {}).get("estimate")
        thr = c.get("threshold")
        few = "  [too few cases]" if c.get("too_few_cases") else ""
        out.append(f"  {name}  {n}: sensitivity {_fmt(sens)}, specificity {_fmt(spec)} at "
                   f"{'n/a' if thr is None else f'{thr:.4g}'}{few}")
    return out


def class_coverage_from_report(report: dict[str, Any], before: ClassCoverage) -> ClassCoverage:
    """The coverage eval.json records (after unreadable images were dropped); ``before`` when it records none."""
    from uopsl.train.evaluate import ClassCoverage

    got = report.get("class_coverage") or {}
    if not got:
        return before
    return ClassCoverage(tuple(got["model_classes"]), tuple(got["evaluated"]), dict(got["left_out"]),
                         dict(got.get("data_classes_not_in_model") or {}))
