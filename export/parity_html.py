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
    return f'{b["changes"]}/{b["n"]} (&le;{_num(b.get("upper95"), ".1%")})'


def _na_reason(row: Mapping[str, Any], metric: str) -> str:
    why = (row.get("not_evaluated") or {}).get(metric)
    return f'<span class="na">n/a: {_e(why)}</span>' if why else '<span class="na">n/a</span>'


def _rate_cell(row: Mapping[str, Any], metric: str) -> str:
    """A class's or the referral's sensitivity/specificity cell: reference / candidate and the changed calls."""
    if f"{metric}_changes" not in row or (row.get("not_evaluated") or {}).get(metric):
        return _na_reason(row, metric)
    return (f'{_num(row.get(f"{metric}_reference"), ".3f")} / {_num(row.get(f"{metric}_candidate"), ".3f")}'
            f'<br>changes {_bound(row.get(f"{metric}_changes"))}')


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _check_value(check: Mapping[str, Any]) -> str:
    return _num(check.get("value"), ".4g")


def _summary(report: Mapping[str, Any]) -> str:
    rows = []
    for c in report["candidates"]:
        if c.get("error"):
            rows.append([_e(c["name"]), _e(c["precision"]), _status(_cand_status(c)),
                         f'<span class="fail">{_e(c["error"])}</span>', "", "", "", "", "", "", "", ""])
            continue
        num, clin = c["numerical"], c["clinical"]
        checks = {k["name"]: k for k in c["checks"]}
        rows.append([
            _e(c["name"]), _e(c["precision"]), _status(_cand_status(c)),
            f"{clin['flips']['n']} ({_num(clin['flips']['rate'], '.2%')}; &le;{_num(clin['flips'].get('upper95'), '.1%')})",
            _check_value(checks.get("class_flip_rate", {})),
            _num(num["max_abs_prob_diff"], ".2e"), _num(num["p99_abs_prob_diff"], ".2e"),
            _num(num["logit_cosine_min"], ".6f"), _num(num["site_map_corr_mean"], ".4f"),
            _check_value(checks.get("auc_drop", {})), _check_value(checks.get("sensitivity_drop", {})),
            _num(clin["top1_agreement"], ".2%"),
        ])
    return _table(["candidate", "precision", "verdict", "referral flips (upper 95 %)", "worst class-call flips",
                   "max |Δp|", "p99 |Δp|", "min logit cos", "site-map corr", "worst AUC drop", "worst sens. drop",
                   "top-1 agreement"], rows)


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
    for note in num.get("notes", []):
        parts.append(f'<p class="note">{_e(note)}</p>')
    parts.append(_headroom(c.get("headroom") or {}))
    rows = []
    for r in clin["per_class"]:
        diff = r.get("auc_difference")
        ci = (f'{_num(diff["estimate"], "+.4f")} [{_num(diff["low"], "+.4f")}, {_num(diff["high"], "+.4f")}]'
              if diff else _na_reason(r, "auc"))
        sens, spec = _rate_cell(r, "sensitivity"), _rate_cell(r, "specificity")
        rows.append([_e(r["name"]), _num(r["threshold"], ".4g"), "yes" if r["referable"] else "no",
                     _num(r.get("n_positive")), _num(r.get("n_negative")),
                     _num(r.get("auc_reference")), _num(r.get("auc_candidate")), ci, sens, spec,
                     _bound(r.get("decision_changes"))])
    ref = clin["referral"]
    ref_sens, ref_spec = _rate_cell(ref, "sensitivity"), _rate_cell(ref, "specificity")
    fl = clin["flips"]
    flips_bound = {"changes": fl["n"], "n": fl.get("n_images", 0), "upper95": fl.get("upper95")}
    rows.append([f"<b>referral</b> ({_e(ref['rule'])})", "", "", _num(ref.get("n_positive")),
                 _num(ref.get("n_negative")), "", "", "", ref_sens, ref_spec,
                 _bound(flips_bound) if "n_images" in fl else str(fl["n"])])
    parts.append(_table(["class", "threshold", "referable", "n+", "n-", "AUC ref", "AUC cand", "Δ AUC [95% CI]",
                         "sens ref / cand", "spec ref / cand", "decision flips"], rows))
    parts.append('<p class="note">Changes: images whose call differs from the reference\'s, among the positives '
                 "(sensitivity), the negatives (specificity) or all images (decision flips), with the exact "
                 "one-sided 95 % upper bound on their rate (Clopper-Pearson). The gates compare the point values; "
                 "the bound shows how large the true rate may still be. n/a says why a figure is missing.</p>")
    roc = images.get(f"roc:{c['name']}")
    if roc:
        parts.append(f'<img class="roc" alt="ROC overlay" src="{roc}">')
    items = clin["flips"]["items"]
    if items:
        parts.append(f"<h3>Flipped referral decisions ({len(items)})</h3>")
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
    parts.append("</div>")
    return "".join(parts)


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
                     _num(h["allowed_changes"], ".1f"), allowed_s, _num(h.get("precision_needed_db"), ".1f")])
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


def render_html(report: Mapping[str, Any], images: Mapping[str, str] | None = None, max_rows: int = 200) -> str:
    """The HTML page for a parity report (``images``: ``roc:<candidate>`` / ``thumb:<id>`` -> data URI)."""
    imgs = images or {}
    b, data, gates = report["bundle"], report["data"], report["gates"]
    status = str(report.get("verdict") or ("PASS" if report["passed"] else "FAIL"))
    css = {"PASS": "pass", "FAIL": "fail"}.get(status, "incomplete")
    counts = {s: sum(1 for c in report["candidates"] if _cand_status(c) == s) for s in ("PASS", "FAIL", "INCOMPLETE")}
    title = f"Parity report: {b['model_name']} ({b['path']})"
    gate_rows = [[_e(k), _num(v, ".4g")] for k, v in gates.items()]
    boot = report.get("bootstrap") or {}
    conf = report.get("confidence") or {}
    record = report.get("record") or {}
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<div class='banner {css}'>{_e(status)}: "
        f"{counts['PASS']} of {len(report['candidates'])} candidates evaluated in full and within the gates"
        + (f"; {counts['INCOMPLETE']} not evaluated in full (see each gate's detail)" if counts["INCOMPLETE"] else "")
        + (f"; {counts['FAIL']} failed" if counts["FAIL"] else "")
        + "".join(f"; {_e(r)}" for r in report.get("reasons", []))
        + "</div>",
        f"<p class='note'>Created {_e(report['created'])} by uopsl {_e(report['toolkit_version'])}. "
        f"Reference: {_e(report['reference']['describe'])}.</p>",
        "<h2>Summary</h2>", _summary(report),
        "<h2>Data and gates</h2>",
        f"<p>{data['n_used']} of {data['n_images']} images used ({data['n_skipped']} could not be read); truth: "
        f"<b>{_TRUTH_WORDS.get(data['truth'], 'none (the reference could not be used)')}</b>"
        + (f"; classes with truth: {_e(', '.join(data['classes_with_truth']))}" if data["classes_with_truth"] else "")
        + ".</p>",
        _table(["gate", "limit"], gate_rows),
    ]
    if not report.get("gates_are_default", True):
        parts.append("<p class='fail'>The gates differ from the strict defaults"
                     + (f" ({_e(report['gates_looser_than_default'])})" if report.get("gates_looser_than_default")
                        else " (stricter)") + ".</p>")
    if conf.get("line"):
        parts.append(f"<p class='note'>{_e(conf['line'])}.</p>")
    if boot:
        parts.append(f"<p class='note'>Bootstrap: {_e(boot.get('method', ''))}; {_e(boot.get('n_boot'))} replicates, "
                     f"alpha {_e(boot.get('alpha'))} (two-sided), seed {_e(boot.get('seed'))}. The image ids used are "
                     "in parity.json (data.image_ids).</p>")
    if record.get("note"):
        parts.append(f"<p class='fail'>{_e(record['note'])}.</p>")
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
    parts.append("<h2>Machine and context</h2>")
    parts.append(f"<pre>{_e(json.dumps({'machine': report['machine'], 'context': report['context'], 'bundle_files': b['files']}, indent=2))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
