"""The parity report as one self-contained HTML page (no scripts, no network; prints cleanly).

Rendered from the ``parity.json`` content, so both files always say the same
thing; images (ROC overlays, thumbnails of flipped images) come in as data URIs.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from uopsl.export.parity_metrics import judged_bound, one_sided_referrals
from uopsl.runtime.bundle import describe_operating_point

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ccc}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#0a6b2d;font-weight:600}.fail{color:#b00020;font-weight:600}.na{color:#777}
.banner{padding:10px 14px;border-radius:4px;font-size:17px;margin:10px 0}
.banner.pass{background:#e3f4e8}.banner.fail{background:#fbe3e6}.banner.incomplete{background:#fff4d6}
.incomplete{color:#8a5a00;font-weight:600}
.warn{background:#fff4d6;padding:6px 10px;border-left:4px solid #8a5a00}
.note{color:#555;font-size:13px}code{font-size:12px;background:#f5f5f5;padding:1px 3px}
.candidate{page-break-inside:avoid}img.roc{max-width:560px;border:1px solid #ddd}
img.thumb{width:96px;height:96px}tr.hl td{background:#fff4d6}
@media print{body{margin:8mm}h2{page-break-after:avoid}.candidate{page-break-before:auto}}
"""


_TRUTH_WORDS = {"labels": "labels", "reference_decisions": "the reference model’s own decisions (no labels)"}


def _e(x: Any) -> str:
    return html.escape(str(x))


def _num(x: Any, fmt: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return '<span class="na">n/a</span>'
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    return format(float(x), fmt)


def _verdict(passed: bool | None) -> str:
    if passed is None:
        return '<span class="na">not evaluable</span>'
    return '<span class="pass">PASS</span>' if passed else '<span class="fail">FAIL</span>'


def _status(status: str | None, passed: bool | None = None) -> str:
    """PASS / FAIL / INCOMPLETE (a report from before the three states has only ``passed``)."""
    s = status or ("PASS" if passed else "FAIL")
    css = {"PASS": "pass", "FAIL": "fail"}.get(s, "incomplete")
    return f'<span class="{css}">{_e(s)}</span>'


def _cand_status(c: Mapping[str, Any]) -> str:
    return str(c.get("verdict") or ("PASS" if c.get("passed") else "FAIL"))


def _bound(b: Mapping[str, Any] | None) -> str:
    """``k/n (upper 95 % x %)`` for a change count with its exact bound."""
    if not b:
        return '<span class="na">n/a</span>'
    by_patient = b.get("by_patient")
    patients = ""
    if isinstance(by_patient, Mapping):
        sizes = by_patient["images_per_patient"]
        spread = f", {sizes['min']}-{sizes['max']} images each" if sizes["min"] != sizes["max"] else ""
        patients = (f'; patients {by_patient["changes"]}/{by_patient["n"]}{spread} '
                    f'&le;{_num(by_patient["upper95_images"], ".1%")}')
    return f'{b["changes"]}/{b["n"]} (&le;{_num(b.get("upper95"), ".1%")}{patients})'


def _na_reason(row: Mapping[str, Any], metric: str) -> str:
    why = (row.get("not_evaluated") or {}).get(metric)
    return f'<span class="na">n/a: {_e(why)}</span>' if why else '<span class="na">n/a</span>'


def _ci(interval: Sequence[Any] | None) -> str:
    """``[low, high]`` of a two-sided interval, or n/a."""
    if not interval:
        return '<span class="na">n/a</span>'
    return f"[{_num(interval[0], '.3f')}, {_num(interval[1], '.3f')}]"


def _rate_cell(row: Mapping[str, Any], metric: str) -> str:
    """A class's or the referral's sensitivity/specificity cell: reference / candidate, their Wilson 95 % intervals
    (when the report has them) and the changed calls."""
    why = (row.get("not_evaluated") or {}).get(metric)
    if f"{metric}_changes" not in row or (why and not _finite_number(row.get(f"{metric}_reference"))):
        return _na_reason(row, metric)
    cell = (f'<span class="incomplete">not gated: {_e(why)}</span><br>' if why else "")
    cell += f'{_num(row.get(f"{metric}_reference"), ".3f")} / {_num(row.get(f"{metric}_candidate"), ".3f")}'
    hit, miss = ("tp", "fn") if metric == "sensitivity" else ("tn", "fp")
    counts = [c for c in (row.get("counts_reference"), row.get("counts_candidate")) if isinstance(c, Mapping)]
    if len(counts) == 2:  # the counts each rate is (reports from before 0.2.8 lack them)
        cell += ('<br><span class="note">' + " / ".join(
            f'{int(c[hit])} of {int(c[hit]) + int(c[miss])}' for c in counts) + "</span>")
    if f"{metric}_reference_ci95" in row:
        cell += (f'<br><span class="note">95 % CI {_ci(row.get(f"{metric}_reference_ci95"))} / '
                 f'{_ci(row.get(f"{metric}_candidate_ci95"))}</span>')
    diff = row.get(f"{metric}_difference")
    if diff:
        cell += (f'<br><span class="note">Δ cand − ref {_num(diff.get("estimate"), "+.3f")} '
                 f'[{_num(diff.get("low"), "+.3f")}, {_num(diff.get("high"), "+.3f")}] (paired, Newcombe)</span>')
    cell += f'<br>changes {_bound(row.get(f"{metric}_changes"))}'
    if metric == "sensitivity" and row.get("lost_positives"):
        cell += f'<br>lost {_bound(row.get("lost_positives"))}'
    return cell


def _finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def _as_number(x: Any) -> float | None:
    """A finite number from a report field written as a number or as text (a skipped class's ``drop``), or None."""
    try:
        v = float(x) if isinstance(x, (int, float, str)) and not isinstance(x, bool) else math.nan
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _patients(d: Mapping[str, Any]) -> str:
    """`` (N patients)`` when the report counted the patients behind a change, else nothing."""
    n = d.get("n_patients")
    return f" ({n} patient{'s' if n != 1 else ''})" if n else ""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def skipped_words(data: Mapping[str, Any]) -> str:
    """The images left out, by why: unreadable, and ungradable by the runtime's quality gate (or that the gate
    was not applied: ``--keep-ungradable``)."""
    n_ungradable = int(data.get("n_ungradable") or 0)
    copies = int(data.get("n_duplicate_content") or 0)
    words = f"{int(data['n_skipped']) - n_ungradable} unreadable"
    if copies:
        words = f"{copies} byte-identical cop{'y' if copies == 1 else 'ies'} of others left out, " + words
    if data.get("quality_gate") == "kept":
        return words + "; ungradable ones kept by --keep-ungradable"
    if "quality_gate" in data:
        return words + f", {n_ungradable} ungradable left out"
    return f"{data['n_skipped']} could not be read"


def _flip_bound(flips: Mapping[str, Any]) -> str:
    """A change rate's 95 % bound as the page shows it (referral flips, a class's changed calls, images with a
    changed finding): the larger of by image and by patient (the one ``--judge-on bounds`` gates), saying
    which when it is the patients'. Showing the image bound alone read "<= 2.5 %" beside a verdict made on a
    4.87 % bound by patient (referral flips), and "<= 7.2 %" for changed findings whose bound by patient was
    26.7 % (a review, session 55)."""
    if not _finite_number(flips.get("upper95")):
        return _num(flips.get("upper95"), ".1%")
    bound, how = judged_bound(flips)
    return _num(bound, ".1%") + (" by patient" if how == "by patient" else "")


def _worst_drop(check: Mapping[str, Any]) -> str:
    """The worst drop over the gated classes and, where a class the gate could not judge (too few cases)
    dropped more, that one beside it: the gated figure alone read as "no AUC loss" (-0.036, a gain) beside an
    ungated class that lost 0.045, nine times the gate (a review, session 55)."""
    value = check.get("value")
    ungated = [(d, str(e.get("class", "?"))) for e in check.get("skipped") or () if isinstance(e, Mapping)
               for d in [_as_number(e.get("drop"))] if d is not None]
    cell = _num(value, ".4g") if value is not None else '<span class="na">none gated</span>'
    if ungated:
        drop, name = max(ungated)
        if not isinstance(value, (int, float)) or not _finite_number(value) or drop > float(value):
            cell += f"; not gated: {_e(name)} {_num(drop, '.4g')}"
    return cell


def _summary(report: Mapping[str, Any]) -> str:
    rows = []
    for c in report["candidates"]:
        if c.get("error"):
            rows.append([_e(c["name"]), _e(c["precision"]), _status(_cand_status(c)),
                         f'<span class="fail">{_e(c["error"])}</span>', "", "", "", "", "", "", "", "", ""])
            continue
        num, clin = c["numerical"], c["clinical"]
        # The measured figures, whatever the verdict compared (judged on the bounds, "checks" hold the bounds).
        checks = {k["name"]: k for k in c.get("estimate_checks") or c["checks"]}
        class_flip = checks.get("class_flip_rate", {})
        rows.append([
            _e(c["name"]), _e(c["precision"]), _status(_cand_status(c)),
            f"{clin['flips']['n']}{_patients(clin['flips'])} ({_num(clin['flips']['rate'], '.2%')}; "
            f"&le;{_flip_bound(clin['flips'])})",
            _class_calls_cell(class_flip, clin.get("class_flips") or {}),
            _findings_cell(clin.get("finding_changes")),
            _num(num["max_abs_prob_diff"], ".2e"), _num(num["p99_abs_prob_diff"], ".2e"),
            _num(num["logit_cosine_min"], ".6f"), _num(num["site_map_corr_mean"], ".4f"),
            _worst_drop(checks.get("auc_drop", {})), _worst_drop(checks.get("sensitivity_drop", {})),
            _num(clin["top1_agreement"], ".2%"),
        ])
    return (_table(["candidate", "precision", "verdict", "referral flips (upper 95 %)",
                    "class calls changed: worst class (gated)", "images with any finding changed (gated)",
                    "max |Δp|", "p99 |Δp|", "min logit cos", "site-map corr", "worst AUC drop (gated classes)",
                    "worst share of positives lost (gated classes)", "top-1 agreement"], rows)
            + '<p class="note">The class-call gate (class_flip_rate) measures the largest share of images whose call '
              "for one referable class changed (the worst single class). An image counts once in the next column "
              "if its call changed for any referable class, so that share can be larger; it has its own gate "
              "(finding_change_rate) and its exact one-sided 95 % upper bound.</p>"
            + _one_sided_referrals(report))


def _one_sided_referrals(report: Mapping[str, Any]) -> str:
    """:func:`one_sided_referrals` as a warning paragraph ("" when the referrals go both ways)."""
    words = one_sided_referrals(report)
    return f'<p class="warn">{_e(words[:1].upper() + words[1:])}.</p>' if words else ""


def _findings_cell(fc: Mapping[str, Any] | None) -> str:
    """``k (rate; <= upper)`` of the images with any changed referable finding (n/a in an older report)."""
    if not fc:
        return '<span class="na">n/a</span>'
    if not fc.get("applicable", True):
        return '<span class="na">no referable class</span>'
    return f"{fc['changes']}{_patients(fc)} ({_num(fc.get('rate'), '.2%')}; &le;{_flip_bound(fc)})"


def _class_calls_cell(check: Mapping[str, Any], class_flips: Mapping[str, Any]) -> str:
    """The worst class's share of changed calls, the class when some call changed (with none, every class is
    "the worst"), and that class's 95 % bound."""
    worst = class_flips.get("worst_class")
    cell = _num(check.get("value"), ".2%")
    if not (worst and check.get("value")):
        return cell
    changes = (class_flips.get("referable") or {}).get(worst)
    bound = f"; &le;{_flip_bound(changes)}" if isinstance(changes, Mapping) and "upper95" in changes else ""
    return f"{cell} ({_e(worst)}{bound})"


def _candidate(c: Mapping[str, Any], images: Mapping[str, str], max_rows: int) -> str:
    parts = [f'<div class="candidate"><h3>{_e(c["name"])} — {_status(_cand_status(c))}</h3>']
    if c.get("error"):
        parts.append(f'<p class="fail">{_e(c["error"])}</p></div>')
        return "".join(parts)
    parts.append(_table(["gate", "value", "limit", "verdict", "detail"], [
        [_e(k["name"]), _num(k["value"], ".4g"), _num(k["limit"], ".4g"),
         _status(k.get("status"), k["passed"]) if k.get("status") or k["passed"] is not None else _verdict(None),
         _e(k["detail"])]
        for k in c["checks"]]))
    num, clin = c["numerical"], c["clinical"]
    top1_source = clin.get("top1_source", "probs")
    parts.append(_table(["max |Δp|", "p99 |Δp|", "mean |Δp|", "max |Δlogit|", "logit cos (mean / min)",
                         "site-map corr (mean / min)", "top-1 agreement", "class-decision agreement"], [[
        _num(num["max_abs_prob_diff"], ".3e"), _num(num["p99_abs_prob_diff"], ".3e"),
        _num(num["mean_abs_prob_diff"], ".3e"), _num(num["max_abs_logit_diff"], ".3e"),
        f'{_num(num["logit_cosine_mean"], ".6f")} / {_num(num["logit_cosine_min"], ".6f")}',
        f'{_num(num["site_map_corr_mean"], ".4f")} / {_num(num["site_map_corr_min"], ".4f")}',
        f'{_num(clin["top1_agreement"], ".2%")} (changes {_bound(clin.get("top1_disagreement"))}; from the '
        f'{_e(top1_source)})', _num(clin["class_decision_agreement"], ".2%")]]))
    parts.append('<p class="note">|Δp|: the candidate\'s probability less the reference\'s, per image and class, '
                 "over all of them. Logit cos: the cosine between an image's two logit vectors (1: the same "
                 "direction). Site-map corr: the Pearson correlation between an image's two predilection-site maps, "
                 "all classes together. Top-1 agreement: the share of images whose highest-scoring class is the "
                 "same. Class-decision agreement: the share of calls, one per image and class (every class, "
                 "referable or not), that are the same at the manifest's thresholds.</p>")
    for note in num.get("notes", []):
        parts.append(f'<p class="note">{_e(note)}</p>')
    parts.append(_arithmetic(c.get("arithmetic")))
    parts.append(_headroom(c.get("headroom") or {}))
    rows = []
    for r in clin["per_class"]:
        diff = r.get("auc_difference")
        ci = (f'{_num(diff["estimate"], "+.4f")} [{_num(diff["low"], "+.4f")}, {_num(diff["high"], "+.4f")}]'
              if diff else _na_reason(r, "auc"))
        if diff and diff.get("note"):
            ci += f'<br><span class="na">{_e(diff["note"])}</span>'
        if diff and (r.get("not_evaluated") or {}).get("auc"):
            ci += f'<br><span class="incomplete">not gated: {_e(r["not_evaluated"]["auc"])}</span>'

        sens, spec = _rate_cell(r, "sensitivity"), _rate_cell(r, "specificity")
        rows.append([_e(r["name"]), _num(r["threshold"], ".4g"), "yes" if r["referable"] else "no",
                     _num(r.get("n_positive")), _num(r.get("n_negative")),
                     _num(r.get("auc_reference")), _num(r.get("auc_candidate")), ci, sens, spec,
                     _bound(r.get("decision_changes"))])
    ref = clin["referral"]
    ref_sens, ref_spec = _rate_cell(ref, "sensitivity"), _rate_cell(ref, "specificity")
    fl = clin["flips"]
    flips_bound = {"changes": fl["n"], "n": fl.get("n_images", 0), "upper95": fl.get("upper95"),
                   **({"by_patient": fl["by_patient"]} if fl.get("by_patient") else {})}
    rows.append([f"<b>referral</b> ({_e(ref['rule'])})", "", "", _num(ref.get("n_positive")),
                 _num(ref.get("n_negative")), "", "", "", ref_sens, ref_spec,
                 _bound(flips_bound) if "n_images" in fl else str(fl["n"])])
    parts.append(_table(["class", "threshold", "referable", "n+ (images)", "n- (images)", "AUC ref", "AUC cand",
                         "Δ AUC, candidate − reference [95% CI] (the auc_drop gate: reference − candidate)",
                         "sens ref / cand (Wilson 95 % CI)", "spec ref / cand (Wilson 95 % CI)", "decision flips"],
                        rows))
    parts.append('<p class="note">Sensitivity and specificity: reference / candidate at the manifest thresholds, '
                 "each with its two-sided 95 % Wilson score interval (reported, not gated; with no labels the truth "
                 "is the reference's own decisions, so its figures are 1 by construction). "
                 "Changes: images whose call differs from the reference\'s, among the positives "
                 "(sensitivity), the negatives (specificity) or all images (decision flips), with the exact "
                 "one-sided 95 % upper bound on their rate (Clopper-Pearson); lost: the positives whose positive "
                 "call the candidate lost, of all positives. "
                 + ("Judged on the bounds (--judge-on bounds), the gates compare the decision flips' bounds, the "
                    "lost positives' bound (sensitivity) and the far end of each AUC interval; the Wilson and "
                    "Newcombe intervals and the specificity changes are reported, not gated. "
                    if c.get("judged_on") == "bounds" else
                    "The gates compare the point values (for a sensitivity, the share of positives whose call was lost, "
                    "which a positive gained does not offset); the bound shows how large the true rate may still be. ")
                 + "Δ cand − ref: the candidate's sensitivity "
                 "minus the reference's with its paired 95 % interval (Newcombe's method 10; reported, not gated)"
                 + ". n/a says why a figure is missing; \"not gated\" marks a figure computed on too few "
                 "cases for a gate to count it. "
                 + ("With the patients known, each change count is also bounded over patients (\"patients k/n\": "
                    "patients with a change of all patients, its bound widened by the most images a patient holds over "
                    "the mean where patients hold unequal numbers; it holds however one patient's images are "
                    "correlated, and --judge-on bounds gates the larger bound); the Wilson intervals are computed "
                    "on the effective number of images (the design effect of the patients' clustering; at 0 or "
                    "100 % as if each patient's images were fully correlated), and so are the two sensitivities' limits that "
                    "the Newcombe interval of their difference combines (the AUC bootstrap resamples patients)."
                    if (clin.get("patients") or {}).get("known") else "Intervals and bounds treat images as "
                    "independent.")
                 + "</p>")
    roc = images.get(f"roc:{c['name']}")
    if roc:
        parts.append(f'<img class="roc" alt="ROC overlay" src="{roc}">')
    items = clin["flips"]["items"]
    if items:
        parts.append(f"<h3>Flipped referral decisions ({len(items)}{_e(_patients(clin['flips']))})</h3>")
        frows = []
        for it in items[:max_rows]:
            thumb = images.get(f"thumb:{it['id']}")
            img = f'<img class="thumb" alt="" src="{thumb}">' if thumb else ""
            truth = "" if it.get("truth_refer") is None else ("refer" if it["truth_refer"] else "no referral")
            frows.append([img, _e(it["id"]), truth, "refer" if it["reference_refer"] else "no referral",
                          "refer" if it["candidate_refer"] else "no referral",
                          _e(", ".join(f"{p:.4f}" for p in it["reference_probs"])),
                          _e(", ".join(f"{p:.4f}" for p in it["candidate_probs"]))])
        parts.append(_table(["", "image", "truth", "reference", "candidate", "reference probs", "candidate probs"],
                            frows))
        if len(items) > max_rows:
            parts.append(f'<p class="note">{len(items) - max_rows} more in parity.json.</p>')
    parts.append(_finding_changes(clin.get("finding_changes") or {}, images, max_rows))
    parts.append("</div>")
    return "".join(parts)


def _finding_changes(fc: Mapping[str, Any], images: Mapping[str, str], max_rows: int) -> str:
    """The images whose call for at least one referable class changed, with both models' findings."""
    items = fc.get("items") or []
    if not items:
        return ""
    rows = []
    for it in items[:max_rows]:
        thumb = images.get(f"thumb:{it['id']}")
        rows.append([f'<img class="thumb" alt="" src="{thumb}">' if thumb else "", _e(it["id"]),
                     _e(", ".join(it["changed"])), _e(", ".join(it["reference_findings"]) or "none"),
                     _e(", ".join(it["candidate_findings"]) or "none"), "yes" if it["referral_changed"] else "no",
                     _e(", ".join(f"{p:.4f}" for p in it["reference_probs"])),
                     _e(", ".join(f"{p:.4f}" for p in it["candidate_probs"]))])
    more = f'<p class="note">{len(items) - max_rows} more in parity.json.</p>' if len(items) > max_rows else ""
    return (f"<h3>Images with a changed finding ({len(items)} of {fc.get('n')}{_e(_patients(fc))}; "
            f"&le;{_flip_bound(fc)} upper 95 %)</h3>"
            '<p class="note">Each image whose positive/negative call for at least one referable class differs '
            "from the reference's, whether or not its referral changed (gated as finding_change_rate; the "
            "class_flip_rate gate takes the worst single class).</p>"
            + _table(["", "image", "changed class(es)", "reference findings", "candidate findings",
                      "referral changed", "reference probs", "candidate probs"], rows) + more)


def _arithmetic(a: dict[str, Any] | None) -> str:
    """The CPU INT8 file in its exact arithmetic against what this CPU's kernels computed (logits SQNR)."""
    if not a:
        return ""
    line = (f'INT8 arithmetic (logits SQNR): the file {_num(a["file_db"], ".1f")} dB from the reference '
            f'(top-1 {_num(a.get("file_top1"), ".1%")} in its exact arithmetic); this CPU '
            f'({_e(a["cpu_int8"])}) {_num(a["kernels_db"], ".1f")} dB from the file\'s exact arithmetic'
            f'{"" if a["faithful"] else " (below " + _num(a["faithful_db"], "g") + " dB: not faithful)"}.')
    note = f'<br><span class="fail">{_e(a["note"])}</span>' if a.get("note") else ""
    return f'<p class="note">{line}{note}</p>'


def _headroom(headroom: Mapping[str, Any]) -> str:
    """The decision-headroom table (:func:`uopsl.export.parity_metrics.decision_headroom`)."""
    if not headroom:
        return ""
    rows = []
    for key, label in (("top1", "top-1 (gap between the two top classes)"), ("referral", "referral boundary")):
        h = headroom.get(key)
        if not h:
            continue
        allowed = h.get("error_rms_allowed")
        allowed_s = _e(h.get("allowed_note") or "n/a") if allowed is None else _num(allowed, ".3g")
        close = ", ".join(f"&lt;{t}: {n}" for t, n in h["close_calls"].items())
        rows.append([label, _e(h["units"]), close, _num(h["error_rms"], ".3g"),
                     f'{_num(h["expected_changes"], ".1f")} / {h["observed_changes"]}',
                     _num(h["allowed_changes"], ".1f"), allowed_s,
                     _e(h["model_note"]) if h.get("model_note") else _num(h.get("precision_needed_db"), ".1f")])
    return ("<h4>Decision headroom</h4>"
            '<p class="note">How close the reference\'s own decisions sit to their boundaries. Close calls: images '
            "whose margin is below each value. The RMS of the candidate's error on every image's margin predicts "
            "the changed decisions (Gaussian errors), shown next to those observed. \"Error RMS at the limit\" is "
            "where that prediction reaches the number the gate allows; the precision needed is the gap to it. "
            "A gap of a few dB may close with another calibration table, rounding or a float layer; a gap of "
            "10-20 dB means the model has too many close calls on these images for files of this precision "
            "as quantized here.</p>"
            + _table(["decision", "units", "close calls (reference margin)", "error RMS",
                      "changes expected / observed", "changes allowed", "error RMS at the limit",
                      "precision needed (dB)"], rows))


def _per_layer(per_layer: Mapping[str, Any], max_rows: int = 40) -> str:
    if not per_layer:
        return ""
    parts = ["<h2>Layer-wise diagnosis (INT8 vs FP32)</h2>"]
    for file, d in per_layer.items():
        parts.append(f"<h3>{_e(file)}</h3>")
        if "error" in d:
            parts.append(f'<p class="fail">{_e(d["error"])}</p>')
            continue
        parts.append(f'<p class="note">{d["images"]} images; {len(d["layers"])} quantized layers matched by tensor '
                     f'name; SQNR threshold {d["sqnr_threshold_db"]:g} dB, own loss &ge; {d["min_drop_db"]:g} dB.</p>')
        cmd = d.get("suggested_command")
        parts.append(f"<p>Suggested: <code>{_e(cmd)}</code></p>" if cmd else "<p>No layer to exclude suggested.</p>")
        for note in d.get("notes", []):
            parts.append(f'<p class="note">{_e(note)}</p>')
        parts.append(_table(["output", "SQNR dB", "cosine"], [[_e(k), _num(v["sqnr_db"], ".2f"), _num(v["cosine"], ".6f")]
                                                              for k, v in d["outputs"].items()]))
        suggested = set(d["suggested_exclude"])
        layers = d["layers"][:max_rows]
        parts.append(_table(
            ["layer (worst first)", "op", "SQNR dB", "cosine", "input SQNR dB", "own loss dB", "range SQNR dB"],
            [[_e(r["node"]), _e(r["op_type"]), _num(r["sqnr_db"], ".2f"), _num(r["cosine"], ".5f"),
              _num(r["input_sqnr_db"], ".2f"), _num(r["sqnr_drop_db"], ".2f"), _num(r["range_sqnr_db"], ".2f")]
             for r in layers],
            ["hl" if r["node"] in suggested else "" for r in layers]))
        if len(d["layers"]) > max_rows:
            parts.append(f'<p class="note">{len(d["layers"]) - max_rows} more layers in parity.json.</p>')
    return "".join(parts)


def _judged_on(on: Any) -> str:
    """What the verdicts compared with the gates, in words (a report from before the option: the estimates)."""
    if on == "bounds":
        return ("<p><b>Judged on the 95 % bounds</b> (<code>--judge-on bounds</code>): a figure over its gate "
                "fails as on the estimates; a figure within it must also have its bound within it, or the gate "
                "reads INCOMPLETE (within the gate on these images, not shown at 95 %). The bounds: each change "
                "rate's exact one-sided upper bound (by image or, larger, by patient), the lower bound of top-1 "
                "agreement, the far end of each AUC drop's two-sided 95 % interval, and for each sensitivity the "
                "exact upper bound of the share of positives lost; a class whose interval is undefined is not "
                "evaluated.</p>")
    return ("<p class='note'>Judged on the point estimates (the default): the bounds beside each figure are "
            "reported, not gated (<code>--judge-on bounds</code> gates them).</p>")


def _photographs_note(images: Mapping[str, str]) -> list[str]:
    """A note above the figures when the page embeds photographs of the data (thumbnails of changed decisions):
    a report passed to a notified body or a colleague carried patient photographs with no word about it."""
    n = sum(1 for k in images if k.startswith("thumb:"))
    if not n:
        return []
    return [f"<p class='note'><b>This page holds {n} photograph{'s' if n != 1 else ''} of the data</b> "
            "(thumbnails of the images whose decisions changed): share it as you would share those photographs, "
            "or validate again with --max-thumbnails 0 for a page without them.</p>"]


def render_html(report: Mapping[str, Any], images: Mapping[str, str] | None = None, max_rows: int = 200) -> str:
    """The HTML page for a parity report (``images``: ``roc:<candidate>`` / ``thumb:<id>`` -> data URI)."""
    imgs = images or {}
    b, data, gates = report["bundle"], report["data"], report["gates"]
    status = str(report.get("verdict") or ("PASS" if report["passed"] else "FAIL"))
    css = {"PASS": "pass", "FAIL": "fail"}.get(status, "incomplete")
    counts = {s: sum(1 for c in report["candidates"] if _cand_status(c) == s) for s in ("PASS", "FAIL", "INCOMPLETE")}
    title = f"Parity report: {b['model_name']} ({b['path']})"
    # A limit of None is no gate, except the FP32 tolerance, which the FP32 file on ort-cpu always has.
    gate_rows = [[_e(k), (_num(v, ".4g") if v is not None or k != "max_prob_diff" else
                          "none, but the FP32 file on ort-cpu: 1e-4 (the ONNX reference's tolerance against PyTorch)")]
                 for k, v in gates.items()]
    boot = report.get("bootstrap") or {}
    conf = report.get("confidence") or {}
    record = report.get("record") or {}
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<div class='banner {css}'>{_e(report.get('headline') or status)}: "
        f"{counts['PASS']} of {len(report['candidates'])} candidates evaluated in full and within the gates"
        + (f"; {counts['INCOMPLETE']} not evaluated in full (see each gate's detail)" if counts["INCOMPLETE"] else "")
        + (f"; {counts['FAIL']} failed" if counts["FAIL"] else "")
        + "".join(f"; {_e(r)}" for r in report.get("reasons", []))
        + "</div>",
        _release(report),
        f"<p class='note'>Created {_e(report['created'])} by uopsl {_e(report['toolkit_version'])}"
        f"{_e(_revision_words(report.get('toolkit_source')))}. "
        f"Reference: {_e(report['reference']['describe'])}.</p>",
        *_photographs_note(imgs),
        *([f"<p class='note'><b>Intended use of this bundle:</b> {_e(b['intended_use']['words'])}</p>"]
          if (b.get("intended_use") or {}).get("words") else []),
        _operating_points(b.get("operating_points")),
        "<h2>Summary</h2>", _summary(report),
        "<h2>Data and gates</h2>",
        f"<p>{data['n_used']} of {data['n_images']} images used ({skipped_words(data)}); truth: "
        f"<b>{_TRUTH_WORDS.get(data['truth'], 'none (the reference could not be used)')}</b>"
        + (f"; classes with truth: {_e(', '.join(data['classes_with_truth']))}" if data["classes_with_truth"] else "")
        + f". {_patient_words(data.get('patients'))}</p>",
        _unknown_labels(data.get("unknown_labels") or {}),
        _table(["gate", "limit"], gate_rows),
        _judged_on(report.get("judged_on")),
    ]
    if not report.get("gates_are_default", True):
        parts.append("<p class='fail'>The gates differ from the strict defaults"
                     + (f" ({_e(report['gates_looser_than_default'])})" if report.get("gates_looser_than_default")
                        else " (stricter)") + ".</p>")
    if report.get("min_cases_per_class"):
        mc = report["min_cases_per_class"]
        parts.append(f"<p class='note'>A class counts as evaluated by the AUC and sensitivity gates from "
                     f"{_e(mc['positive'])} positive and {_e(mc['negative'])} negative images (also the referral "
                     f"decision); {_e(mc.get('why', ''))}.</p>")
    if conf.get("line"):
        parts.append(f"<p class='note'>{_e(conf['line'])}.</p>")
    if conf.get("independence_note"):
        parts.append(f"<p class='note'>Note: {_e(conf['independence_note'])}.</p>")
    if boot:
        parts.append(f"<p class='note'>Bootstrap: {_e(boot.get('method', ''))}; {_e(boot.get('n_boot'))} replicates, "
                     f"alpha {_e(boot.get('alpha'))} (two-sided), seed {_e(boot.get('seed'))}. The image ids used are "
                     "in parity.json (data.image_ids).</p>")
    parts.append(_record_section(record))
    parts.append(_outputs_words(report))
    diffs = report["preprocess"]["differences"]
    if diffs:
        parts.append(_table(["preprocessing parameter", "reference (checkpoint)", "bundle manifest"],
                            [[_e(k), _e(v[0]), _e(v[1])] for k, v in diffs.items()]))
    for note in report.get("notes", []):
        parts.append(f"<p class='note'>{_e(note)}</p>")
    parts.append("<h2>Candidates</h2>")
    parts.extend(_candidate(c, imgs, max_rows) for c in report["candidates"])
    parts.append(_per_layer(report.get("per_layer", {})))
    if report["skipped_candidates"]:
        parts.append("<h2>Backends not run here</h2>")
        parts.append(_table(["candidate", "reason"], [[_e(s["name"]), _e(s["reason"])]
                                                      for s in report["skipped_candidates"]]))
    if report["skipped_images"]:
        parts.append("<h2>Images that could not be used</h2>")
        parts.append(_table(["image", "reason", "message"], [[_e(s["id"]), _e(s["reason"]), _e(s["message"])]
                                                             for s in report["skipped_images"][:max_rows]]))
    parts.append(_signing(report))
    parts.append("<h2>Machine and context</h2>")
    parts.append(_key_values(report.get("machine") or {}, _MACHINE_LABELS))
    parts.append("<h3>Context</h3>")
    parts.append(_key_values(report.get("context") or {}, _CONTEXT_LABELS))
    parts.append("</body></html>")
    return "\n".join(parts)


def _operating_points(points: Any) -> str:
    """Where each threshold came from, in one note ("" for a bundle that does not say)."""
    if not isinstance(points, list) or not points:
        return ""
    words = []
    for p in points:
        if not isinstance(p, Mapping):
            continue
        how = describe_operating_point(p)
        words.append(f"{_e(p.get('name'))} {_num(p.get('threshold'), '.3g')} ({_e(how)})")
    return ("<p class='note'><b>Operating thresholds</b> (the decisions compared here), as the bundle records "
            "them: " + "; ".join(words) + ".</p>")


def _release(report: Mapping[str, Any]) -> str:
    """Why a PASS is not a release pass (looser gates, too few images, another checkpoint); nothing otherwise."""
    reasons = report.get("release_pass_reasons") or []
    if report.get("release_pass", True) or report.get("verdict") != "PASS" or not reasons:
        return ""
    return ("<p class='fail'>Not a release pass: " + "; ".join(_e(r) for r in reasons)
            + ". The exit code is 0 because these are the gates and data asked for.</p>")


def _patient_words(p: Mapping[str, Any] | None) -> str:
    """The data's patients in words (nothing in a report from before they were counted)."""
    if not p:
        return ""
    if not p.get("known"):
        return "The data carry no patient ids: the AUC bootstrap resamples images."
    alone = p.get("n_images_without_patient") or 0
    return (f"{_e(p['n_patients'])} patients"
            + (f" ({alone} image(s) without a patient id, each counted as a patient of its own)" if alone else "")
            + ": the AUC bootstrap resamples patients.")


def _record_section(record: Mapping[str, Any]) -> str:
    """What this run wrote into the manifest, what the manifest kept instead and why, and what it never offered."""
    if not record:
        return ""
    parts = ["<h3>Manifest record</h3>"]
    if not record.get("enabled"):
        parts.append("<p class='note'>Recording was off: nothing was written into the manifest.</p>")
    recorded = record.get("recorded_verdicts") or [{"name": n, "verdict": ""} for n in record.get("recorded", [])]
    parts.append("<p>Recorded in the manifest: "
                 + (", ".join(f"{_e(v['name'])} {_e(v['verdict'])}" for v in recorded) if recorded else "nothing")
                 + ".</p>")
    rows = [[_e(k["name"]), _e(k["verdict"]), _e(k.get("kept_verdict")), _e(k.get("kept_created")),
             _e(k.get("why", ""))] for k in record.get("kept") or []]
    rows += [[_e(k["name"]), _e(k["verdict"]), '<span class="na">earlier record, if any</span>', "",
              _e(k.get("why", ""))] for k in record.get("not_recorded") or []]
    if rows:
        parts.append(_table(["candidate", "verdict here", "verdict the manifest keeps", "kept since", "why"], rows))
    if record.get("note"):
        parts.append(f"<p class='fail'>{_e(record['note'])}.</p>")
    return "".join(parts)


def _outputs_words(report: Mapping[str, Any]) -> str:
    """Where every image's outputs are (outputs.csv and its sha256) and whether they came from the cache."""
    out = report.get("outputs_csv") or {}
    cache = report.get("cache") or {}
    words = []
    if out:
        words.append(f"Every image's outputs (reference and each candidate: probabilities, logits, referral "
                     f"decision) are in {_e(out['file'])} (sha256 <code>{_e(out['sha256'])}</code>), from which "
                     "each figure here can be recomputed.")
    if cache:
        said = {"all": "All the model outputs came from the output cache of an earlier run (.parity-cache).",
                "some": "Some of the model outputs came from the output cache of an earlier run (.parity-cache), "
                        "the others were computed by this run.",
                "none": "The model outputs were computed by this run."}.get(str(cache.get("outputs_from_cache")), "")
        if said:
            words.append(said)
    return f"<p class='note'>{' '.join(words)}</p>" if words else ""


def _unknown_labels(u: Mapping[str, Any]) -> str:
    """The line saying which images were left out for labels the bundle does not know (nothing when none was)."""
    n = u.get("n_dropped_images") or 0
    if not n:
        return ""
    near = u.get("near_misses") or {}
    labels = ", ".join(f"{_e(lab)} ({k} image{'s' if k != 1 else ''}"
                       + (f"; the bundle has {_e(near[lab])}" if lab in near else "") + ")"
                       for lab, k in (u.get("labels") or {}).items())
    return (f"<p class='fail'>{n} image{'s' if n != 1 else ''} left out (--unknown-labels "
            f"{_e(u.get('policy'))}): they carry label(s) that are not classes of this bundle: {labels}. "
            "Their ids are in parity.json (data.unknown_labels.dropped_ids).</p>")


#: Row labels of the machine table (other keys are shown as they are).
_MACHINE_LABELS = {"cpu": "CPU model", "cpu_count": "CPU cores", "arch": "architecture", "platform": "platform",
                   "python": "Python", "torch": "PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO",
                   "tensorrt": "TensorRT", "numpy": "NumPy", "cv2": "OpenCV"}
_CONTEXT_LABELS = {"command": "command line", "data": "--data", "data_description": "data read as",
                   "limit": "--limit", "limit_drawn_from": "--limit drawn from (images)", "seed": "--seed",
                   "bootstrap_seed": "bootstrap seed",
                   "checkpoint": "checkpoint", "reference_kind": "reference kind", "device": "reference device",
                   "checkpoint_weights_sha256": "checkpoint weights sha256",
                   "checkpoint_manifest_differences": "checkpoint vs manifest",
                   "other_checkpoint": "--other-checkpoint",
                   "other_checkpoint_reason": "why another checkpoint", "onnx_reference": "ONNX reference",
                   "unknown_labels": "--unknown-labels"}


def _value(v: Any) -> str:
    """A context value for a table cell: text as it is, lists one per line, mappings as compact key: value lines."""
    if v is None or v == "" or v == [] or v == {}:
        return '<span class="na">-</span>'
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, Mapping):
        return "<br>".join(f"{_e(k)}: {_value(x) if not isinstance(x, (Mapping, list)) else _e(json.dumps(x))}"
                           for k, x in v.items())
    if isinstance(v, list):
        return "<br>".join(_e(x) if not isinstance(x, (Mapping, list)) else _e(json.dumps(x)) for x in v)
    return _e(v)


def _key_values(d: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    """A two-column table of ``d``: the known keys first, in ``labels``' order, then the rest as they come."""
    keys = [k for k in labels if k in d] + [k for k in d if k not in labels]
    return _table(["", "value"], [[_e(labels.get(k, k)), _value(d[k])] for k in keys])


def _signing(report: Mapping[str, Any]) -> str:
    """What the verdicts are tied to: the files, the manifest, the images and their labels, the checkpoint."""
    b, data, ref = report["bundle"], report["data"], report["reference"]
    if "manifest_sha256" not in b and "images_sha256" not in data:
        return ""  # a report from before these facts were recorded
    rows = [["manifest.json sha256 (before this run recorded its verdicts)", _code(b.get("manifest_sha256"))],
            ["manifest content sha256", _code(b.get("manifest_content_sha256"))],
            ["images and labels (content) sha256", _code(data.get("images_sha256"))],
            ["image ids (names only) sha256", _code(data.get("image_ids_sha256"))],
            ["checkpoint weights sha256 the bundle records", _code(b.get("checkpoint_weights_sha256"))]]
    if "checkpoint_weights_sha256" in ref:
        match = ref.get("checkpoint_matches_bundle")
        rows.append(["reference checkpoint weights sha256", _code(ref["checkpoint_weights_sha256"])
                     + ("" if match is None else " (the bundle's)" if match else
                        ' <span class="fail">(not the checkpoint the bundle records)</span>')])
    if ref.get("sha256"):
        rows.append([f"reference file {_e(ref.get('file'))} sha256", _code(ref["sha256"])])
    rows.append(["reference fingerprint (output cache key)", _code(ref.get("fingerprint"))])
    files = _table(["bundle file", "kind", "precision", "size (bytes)", "sha256"],
                   [[_e(f["path"]), _e(f["kind"]), _e(f["precision"]), _num(f.get("size")), _code(f.get("sha256"))]
                    for f in b["files"]])
    return ("<h2>What was validated (checksums)</h2>"
            '<p class="note">The verdicts hold for these bytes. Each file\'s sha256 was checked against the file when '
            "the run started. The images' content digest: "
            f"{_e(data.get('images_sha256_method', ''))}.</p>"
            + _table(["", "sha256"], rows) + files)


def _code(x: Any) -> str:
    return f"<code>{_e(x)}</code>" if x else '<span class="na">not recorded</span>'


def _revision_words(source: Any) -> str:
    """`` (git 1ac9ce7e3def, with local changes; code sha256 324f687f3b98)``: the checkout's commit where the
    report was made from one, and the digest of the code that ran wherever it could be read; else nothing."""
    if not isinstance(source, dict):
        return ""
    parts = []
    if source.get("git_commit"):
        parts.append(f"git {str(source['git_commit'])[:12]}" + (", with local changes" if source.get("git_dirty")
                                                                else ""))
    if source.get("code_sha256"):
        parts.append(f"code sha256 {str(source['code_sha256'])[:12]}")
    return f" ({'; '.join(parts)})" if parts else ""
