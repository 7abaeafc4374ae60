"""``uopsl-screen``: screen fundus photographs with a deployment bundle.

Commands: ``run`` (files, folders, list files -> results.csv/jsonl, report.html,
overlays; resumes), ``watch`` (a folder a camera writes into), ``bench``
(latency and throughput per backend), ``info`` (manifest, files, backends),
``verify`` (checksums). Exit codes: 0 all screened, 1 some images failed or
were ungradable, 2 usage, bundle, output-folder or file-system error (or no
photograph found), 130 interrupted (Ctrl-C), 143 stopped by SIGTERM (both save what
was done: run the same command again to continue), 141 output cut off by a closed pipe (``| head``).
Heavy modules are imported inside the commands, so ``--help`` stays instant.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from uopsl.runtime.clikit import (PARALLEL_COUNT, plural, FiniteFloatRange, PointingGroup, main_entry, option_given,
                                   verbose_option, version_option)
from uopsl.runtime.version import __version__
from uopsl.runtime.heap import keep_freed_heap

if TYPE_CHECKING:
    from uopsl.runtime.intended_use import IntendedUse

BACKEND_CHOICES = ["auto", "ort-cpu", "ort-cuda", "ort-trt", "openvino", "tensorrt"]
PRECISION_CHOICES = ["auto", "fp32", "fp16", "int8"]
WORKER_POOL_CHOICES = ["auto", "threads", "processes"]  # spelled out: importing the pipeline here would slow --help

# No file_okay=False: a file given as the bundle (model.onnx) gets the toolkit's own message, naming its folder.
_bundle_arg = click.argument("bundle", type=click.Path(path_type=Path))


def _trust_options(f: Any) -> Any:
    return click.option("--trusted-key", "trusted_keys", multiple=True,
                        type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        help="PEM public key of a bundle maker to trust (repeatable), besides the machine's own "
                             "(its trusted-keys folder, UOPSL_TRUSTED_KEYS). With any, only bundles one of them "
                             "signed are used.")(f)


def _backend_options(f: Any) -> Any:
    f = click.option("--threads", type=PARALLEL_COUNT, default=None,
                     help="Inference threads (default: the backend's own, all cores).")(f)
    f = click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="auto", show_default=True,
                     help="Model precision; auto lets the backend selection decide.")(f)
    return click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
                        help="Inference backend; auto picks the fastest usable one (-vv logs why).")(f)


@click.group(name="uopsl-screen", cls=PointingGroup, context_settings={"help_option_names": ["-h", "--help"]},
             elsewhere={
                 "validate": "a device validates a bundle's engines and INT8 files against its FP32 file with "
                             "`uopsl validate BUNDLE --onnx-reference --data DIR --out DIR` (the uopsl command, "
                             "installed beside uopsl-screen; it needs no PyTorch)",
                 "build-engine": "TensorRT engines are built on the device with `uopsl build-engine BUNDLE` (the "
                                 "uopsl command, with TensorRT installed: docs/deployment.md)"})
@version_option("uopsl-screen")
@verbose_option
def cli() -> None:
    """Screen fundus photographs with a uopsl deployment bundle (offline)."""


_MAX_NAMED = 5


def _echo_summary(summary: Any, out: Path, failed: Sequence[tuple[str, str, Sequence[str]]] = (),
                  report: bool = True, use: IntendedUse | None = None) -> None:
    """Counts, the files that need attention by name (at most five), then where to look: the report.

    ``failed``: (source, status, reasons) of the photographs screened now that got no result; those an
    earlier run already failed (``summary.earlier_failed``) are named after them, marked as such, so a
    rerun still says which photographs need a retake. ``use``: the bundle's intended use; unless clinical,
    its caution opens the summary (the counts read like a screening).
    """
    from uopsl.runtime.reasons import reason_label
    from uopsl.runtime.report import REPORT, distinct_names
    from uopsl.runtime.results import CSV

    c = summary.counts
    if use is not None and not use.for_patients:
        click.echo(f"{use.short()}: {use.warning()}", err=True)
    click.echo(
        f"{plural(summary.total, 'image')}: {summary.refer} refer, {c.get('ok', 0) - summary.refer} no referable "
        f"finding, {c.get('ungradable', 0)} ungradable, {c.get('error', 0)} unreadable or not screened "
        f"({summary.screened} screened now, {summary.skipped} from an earlier run)",
        err=True,
    )
    retaken = getattr(summary, "retaken", 0)
    n_bad = max(0, c.get("ungradable", 0) + c.get("error", 0) - retaken)
    if retaken:
        click.echo(f"  {plural(retaken, 'photograph')} retaken under the same name (the earlier row is kept, marked "
                   "replaced)", err=True)
    if n_bad:
        earlier = getattr(summary, "earlier_failed", ())[:max(0, _MAX_NAMED - len(failed))]
        failing = [*((src, st, reasons, "") for src, st, reasons in failed[:_MAX_NAMED]),
                   *((src, st, reasons, "; earlier run") for src, st, reasons in earlier)]
        shown = distinct_names([src for src, *_ in failing])
        # repr-style escapes for control characters: a newline in a file name must not split the line.
        named = [f"{_one_line_name(name)} ({reason_label(reasons) or st}{when})"
                 for name, (src, st, reasons, when) in zip(shown, failing)]
        rest = max(0, n_bad - len(named))
        click.echo("  retake or check: " + ", ".join(named)
                   + (f"{', ' if named else ''}{rest} more in the report" if rest else ""), err=True)
    listed = getattr(summary, "in_folder", None)
    if listed is not None and listed > summary.total:
        # The counts above are this command's inputs; the CSV and the report list the folder's every row. A watch
        # stopped before its first look at the folder (a short --timeout) counted nothing of what earlier runs had
        # screened there ("0 images"); a run given part of a folder, or a file replaced since it was screened
        # (both rows are kept), counted fewer than the report shows (a review: "4 images" against "5 images").
        click.echo(f"  {CSV} lists {plural(listed, 'photograph')} in all, earlier runs' included", err=True)
    click.echo(f"{'report' if report else 'results'}: {out / (REPORT if report else CSV)}", err=True)
    for path in summary.not_updated:
        click.echo(f"NOT updated: {path} is open in another program (Excel?), or read-only or immutable; close it "
                   "(or make it writable) and run the same command again to rewrite it (nothing is screened twice)",
                   err=True)


def _one_line_name(name: str) -> str:
    """``name`` with control characters (a newline, a tab) written as escapes, for one console line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def why(reasons: Sequence[str]) -> str:
    """The main cause's words, then the machine tags that they do not already say ("blurred", not
    "blurred; blurred")."""
    from uopsl.runtime.reasons import reason_label  # lazily, as every import here: --help stays instant

    label = reason_label(reasons)
    rest = [t for t in reasons if t.replace("_", " ") != label]
    return "; ".join([label, ", ".join(rest)] if rest else [label])


def _failures() -> tuple[dict[str, tuple[str, str, Sequence[str]]], Callable[[Any], None]]:
    """A dict and an ``on_result`` callback that keeps, per file, the photograph screened without a result.

    Keyed by file, so a file ``watch`` screened again (a half-copied file, then the whole one) is named
    only for what its latest screening found.
    """
    failed: dict[str, tuple[str, str, Sequence[str]]] = {}

    def note(r: Any) -> None:
        if r.status != "ok":
            failed[str(r.source)] = (str(r.source), str(r.status), tuple(r.reasons))
        else:
            failed.pop(str(r.source), None)

    return failed, note


_worker_pool_option = click.option(
    "--worker-pool", type=click.Choice(WORKER_POOL_CHOICES), default="auto", show_default=True,
    help="How photographs are prepared in parallel. auto: processes when the model runs on a GPU (threads "
         "stop scaling at about 1.5x there), threads on a CPU backend and for fewer photographs (files named, "
         "not folders) than --batch times the worker processes.")
_csv_option = click.option(
    "--csv", "csv_style", type=click.Choice(["comma", "semicolon"], case_sensitive=False), default="comma",
    show_default=True, envvar="UOPSL_CSV", show_envvar=True,
    help="results.csv layout: comma (decimal point) or semicolon (decimal comma, for Excel where the comma is "
         "the decimal mark); UOPSL_CSV sets it once for every run and watch on a PC.")


@cli.command("run")
@_bundle_arg
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (results.csv, results.jsonl, report.html, run.json, thumbs/, overlays/, and "
                   "days/ once it holds photographs of two screening days or above 1,000); not inside a bundle or "
                   "checkpoint folder.")
@_backend_options
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True, help="Images per inference call.")
@click.option("--workers", type=PARALLEL_COUNT, default=None,
              help="Preprocessing threads or processes (default: threads, the cores up to 4; processes, the "
                   "cores less one, 2 to 8).")
@_worker_pool_option
@click.option("--overlays/--no-overlays", default=True, show_default=True, help="Write heatmap overlay PNGs.")
@click.option("--report/--no-report", default=True, show_default=True, help="Write report.html.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when it is a terminal).")
@click.option("--no-verify", is_flag=True,
              help="Skip the checksums of the bundle's files other than the model file that runs (which is always "
                   "checked as it loads); the report says so. A faster start on a large bundle.")
@_csv_option
@_trust_options
def run_cmd(bundle: Path, inputs: Sequence[Path], out: Path, backend: str, precision: str, threads: int | None,
            batch: int, workers: int | None, worker_pool: str, overlays: bool, report: bool, progress: bool | None,
            no_verify: bool, csv_style: str, trusted_keys: Sequence[Path]) -> int:
    """Screen INPUTS (files, folders searched recursively, or .txt/.lst/.list list files) into --out.

    Rerunning with the same --out skips the images already screened.

    \b
    Exit codes: 0 every photograph screened, 1 some failed or were ungradable
    (their rows say why), 2 a usage, bundle, output-folder or file-system error
    or no photograph found, 130 interrupted (Ctrl-C), 143 stopped by SIGTERM;
    both of these keep what was screened (rerun to continue).
    """
    from uopsl.runtime import progress as progress_bars
    from uopsl.runtime.api import Screener

    show = progress_bars.terminal_wants_bars() if progress is None else progress
    failed, note = _failures()
    s = Screener(bundle, backend, precision=precision, threads=threads, batch_size=batch, workers=workers,
                 worker_pool=worker_pool, verify=not no_verify, csv_style=csv_style, trusted_keys=trusted_keys)
    s.check_output(out, list(inputs))  # before the model loads: a wrong --out fails in a second
    with s:
        summary = s.screen_to(out, list(inputs), overlays=overlays, report=report, progress=show, on_result=note)
    _echo_summary(summary, out, list(failed.values()), report=report, use=s.intended_use)
    return summary.exit_code


@cli.command("watch")
@_bundle_arg
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (results.csv, results.jsonl, report.html, run.json, thumbs/, overlays/, days/), "
                   "refreshed as photographs arrive; it may sit inside FOLDER (it is never screened) but must not hold it, nor lie "
                   "inside a bundle or checkpoint folder.")
@_backend_options
@click.option("--overlays/--no-overlays", default=True, show_default=True, help="Write heatmap overlay PNGs.")
@click.option("--settle-ms", type=click.IntRange(min=0), default=1000, show_default=True,
              help="A file is taken once its size and mtime are unchanged this long (0: a new file when first seen, "
                   "for a camera that renames finished photographs into place).")
@click.option("--poll", "poll_s", type=FiniteFloatRange(min=0.01), default=0.5, show_default=True,
              help="Longest pause between scans (s); a scan comes sooner when a file's settle time ends before it.")
@click.option("--max-images", type=click.IntRange(min=1), default=None, help="Stop after screening this many new photographs (ones screened before into --out do not count).")
@click.option("--timeout", "timeout_s", type=FiniteFloatRange(min=0), default=None, help="Stop after this many seconds.")
@_csv_option
@_trust_options
def watch_cmd(bundle: Path, folder: Path, out: Path, backend: str, precision: str, threads: int | None,
              overlays: bool, settle_ms: int, poll_s: float, max_images: int | None, timeout_s: float | None,
              csv_style: str, trusted_keys: Sequence[Path]) -> int:
    """Screen photographs as they appear in FOLDER (until Ctrl-C, --max-images or --timeout).

    \b
    Exit codes: 0 every photograph screened, 1 some failed or were ungradable
    (not one retaken under its name the same day), 2 a usage, bundle,
    output-folder or file-system error. Ctrl-C and SIGTERM are the normal stop
    here: they end with 0 or 1 as above.
    """
    from uopsl.runtime.api import Screener
    from uopsl.runtime.watch import WatchConfig, watch_folder

    cfg = WatchConfig(settle_ms=settle_ms, poll_s=poll_s, max_images=max_images, timeout_s=timeout_s)

    failed, note = _failures()

    def show(r: Any) -> None:
        verdict = ("REFER" if r.refer else "ungradable, retake" if r.status == "ungradable" else r.status
                   if r.status != "ok" else "no referable finding")  # as in run's summary
        # For hours, this line is all a clinic sees of each result: it carries the bundle's caution too.
        click.echo(f"{tag}{verdict:20s} {r.source}" + (f"  ({why(r.reasons)})" if r.reasons else ""), err=True)
        note(r)

    s = Screener(bundle, backend, precision=precision, threads=threads, batch_size=1, csv_style=csv_style,
                 trusted_keys=trusted_keys)
    tag = s.intended_use.tag()
    s.check_output(out, [folder])  # before the model loads
    with s:
        summary = watch_folder(s, folder, out, cfg, overlays=overlays, on_result=show)
    _echo_summary(summary, out, list(failed.values()), use=s.intended_use)
    return summary.exit_code


@cli.command("bench")
@_bundle_arg
@click.option("--backend", default="auto", show_default=True,
              help="A backend name, a comma list, 'all' (every usable one) or auto.")
@click.option("--precision", default="auto", show_default=True,
              help="auto (what `run` would use: INT8 or FP16 only once `uopsl validate` passed it here), fp32, "
                   "fp16, int8, a comma list, or all (every file, validated or not).")
@click.option("--batch", "batches", default="1,8", show_default=True, help="Comma-separated batch sizes, each once.")
@click.option("--iters", type=click.IntRange(min=1), default=50, show_default=True, help="Timed iterations per case.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed warm-up iterations.")
@click.option("--threads", type=PARALLEL_COUNT, default=None, help="Inference threads.")
@click.option("--workers", type=PARALLEL_COUNT, default=None,
              help="Preprocessing threads or processes of the end-to-end run (default: threads, the cores up to "
                   "4; processes, the cores less one, 2 to 8).")
@_worker_pool_option
@click.option("--images", "images", type=click.Path(exists=True, path_type=Path), default=None,
              help="Folder of real photographs for preprocessing and end-to-end timing (default: synthetic).")
@click.option("--e2e/--no-e2e", default=True, show_default=True, help="Also time decode-to-results throughput.")
@click.option("--e2e-images", type=click.IntRange(min=1), default=200, show_default=True,
              help="Photographs the end-to-end run screens (cycled when fewer exist).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the figures as JSON here (as well as the table); not inside a bundle or checkpoint folder.")
@_trust_options
def bench_cmd(bundle: Path, backend: str, precision: str, batches: str, iters: int, warmup: int, threads: int | None,
              workers: int | None, worker_pool: str, images: Path | None, e2e: bool, e2e_images: int,
              json_out: Path | None, trusted_keys: Sequence[Path]) -> int:
    """Latency (p50/p90/p99) and throughput per backend and batch size; preprocessing separately.

    Exit 0 when everything asked for was measured; 1 when one of several backends or precisions named on the
    command line was not (the table's "not measured" lines say why), so a script that expects, say, TensorRT
    does not read CPU figures alone as success; 2 for a usage or bundle error, and when the only backend and
    precision named cannot run here (the error says what is missing).
    """
    from uopsl.runtime.bench import BenchConfig, format_table, run_bench
    from uopsl.runtime.errors import ConfigError
    from uopsl.runtime.fsio import write_json

    try:
        sizes = tuple(int(b) for b in batches.split(",") if b.strip())
    except ValueError as exc:
        raise ConfigError(f"--batch takes comma-separated integers like 1,8; got {batches!r}") from exc
    if not e2e:
        unused = [f"--{n.replace('_', '-')}" for n in ("workers", "worker_pool", "e2e_images") if option_given(n)]
        if unused:
            raise click.UsageError(f"{', '.join(unused)} set the end-to-end run, which --no-e2e turns off: drop "
                                   "one or the other")
    if json_out is not None:  # before minutes of timing, not after (missing folders are made when it is written)
        from uopsl.runtime.fsio import check_output_file
        from uopsl.runtime.model_folders import check_output_outside_model_folders

        check_output_outside_model_folders(json_out, "--json", is_file=True)  # first: the next one writes a probe
        check_output_file(json_out, "--json", "bench.json")
    cfg = BenchConfig(batches=sizes, iters=iters, warmup=warmup, threads=threads, e2e=e2e, e2e_images=e2e_images,
                      workers=workers, worker_pool=worker_pool)
    result = run_bench(bundle, backend, precision, cfg, images=images, trusted_keys=trusted_keys)
    click.echo(format_table(result))
    if json_out is not None:
        write_json(json_out, result)
        click.echo(f"wrote {json_out}", err=True)
    return 1 if result.get("failed") else 0


@cli.command("info")
@_bundle_arg
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and backend table as JSON.")
@_trust_options
def info_cmd(bundle: Path, as_json: bool, trusted_keys: Sequence[Path]) -> int:
    """Manifest summary, files and precisions, backends usable here, engine compatibility (exit 2 when a file
    fails its checksum, or the bundle is not signed by a key this machine trusts)."""
    from uopsl.runtime.backends import backend_table
    from uopsl.runtime.bundle import MANIFEST as MANIFEST_NAME
    from uopsl.runtime.bundle import REFERS_NO_ONE, describe_operating_point, read_manifest_raw, verify
    from uopsl.runtime.signing import check_signature, trusted_keys_for

    keys = trusted_keys_for(trusted_keys)
    m, raw = read_manifest_raw(bundle)
    bad = {c.path: c.reason for c in verify(bundle, m, raw) if not c.ok}  # info must not show a tampered bundle as fine
    sig = check_signature(bundle, keys, raw=raw)
    refused = bool(bad) or (bool(keys) and not sig.trusted)
    aside: list[str] = []
    as_read = m  # --json shows the manifest as the file holds it
    if keys and sig.trusted:  # what auto reads here: the records the signature covers (and later refusals)
        from uopsl.runtime.signing import signed_parity_view

        m, aside = signed_parity_view(m, sig.signed_parity)
    table = backend_table(bundle, m)
    auto = None if refused else _auto_choice(bundle, m)
    if refused:  # run, watch, bench and the Screener refuse the whole bundle: no backend runs anything from it
        why = "a file fails its checksum" if bad else "it is not signed by a key this machine trusts"
        table = [(n, False, f"{note} (nothing runs from this bundle here: {why})") for n, _ok, note in table]
    # The revocations this machine applies (every source; those for keys it does not trust change nothing).
    revoked = {(r.kind, r.ident, r.before, r.reason, r.source): r for k in keys for r in k.revocations}
    revocations = [{"kind": r.kind, "id": r.ident, "before": r.before.isoformat() if r.before else None,
                    "reason": r.reason, "source": r.source} for r in revoked.values()]
    if as_json:
        use = {**m.intended_use.to_dict(), "warning": m.intended_use.warning()}
        click.echo(json.dumps({"manifest": as_read.to_dict(), "intended_use": use, "checksums_ok": not bad,
                               "checksum_failures": bad,
                               "signature": {**sig.to_dict(), "keys_trusted_here": [k.key_id for k in keys],
                                             "revocations_here": revocations,
                                             "parity_set_aside": aside},
                               "backends": [{"backend": n, "usable": ok, "note": note} for n, ok, note in table],
                               "auto": auto,
                               "parity": _parity_json(m, bad)},
                              indent=2, default=str))
        return 2 if refused else 0
    p = m.preprocess
    click.echo(f"bundle     {bundle}")
    click.echo(f"model      {m.model_name} ({m.backbone or 'backbone not recorded'}), head {m.head}, "
               f"toolkit {m.toolkit_version}, format {m.format_version}")
    if _newer_version(m.toolkit_version, __version__):
        click.echo(f"           made by uopsl {m.toolkit_version}, newer than this runtime ({__version__}): it reads "
                   "this bundle's format, but upgrading uopsl here keeps the device in step with the exporter")
    click.echo(f"use        {m.intended_use.describe()}")
    click.echo(f"signature  {sig.describe()}" + ("  (REFUSED here: this machine trusts keys, and not this "
                                                  "bundle)" if keys and not sig.trusted else ""))
    if sig.signature_id:
        click.echo(f"           signature id {sig.signature_id}" + ("" if sig.trusted else " (not verified)"))
    if revocations:
        sources = sorted({str(r["source"]).rsplit(":", 1)[0] for r in revocations})
        click.echo(f"           {len(revocations)} revocation(s) in force here ({', '.join(sources)})")
    click.echo(f"input      {p.size}x{p.size} uint8 RGB, clahe={p.clahe}, site maps {m.site_map_size[0]}x{m.site_map_size[1]}")
    if not p.fast_decode:
        click.echo("decode     JPEGs at full size (fast_decode off)")
    else:
        click.echo(f"decode     JPEGs at 1/2-1/8 scale down to {p.decode_min_ratio:g}x the model size"
                   + (f", never below {p.decode_min_side} px" if p.decode_min_side else "")
                   + (" (the rule of bundles made before decode_min_ratio existed)" if p.uses_legacy_decode_rule else ""))
    click.echo(f"referral   {m.referral_rule}" + (f" >= {m.referral_threshold}" if m.referral_rule == "referable_sum" else "")
               + (f"  REFERS NO ONE: {REFERS_NO_ONE}" if m.refers_no_one else ""))
    click.echo("classes")
    points = {str(p.get("name")): p for p in m.notes.get("operating_points") or [] if isinstance(p, dict)}
    width = max(16, *(len(c.name) for c in m.classes))  # a long class name keeps its column apart
    for c in m.classes:
        flags = ", ".join(x for x in ("referable" if c.referable else "", "" if c.seen_in_training else "zero-shot") if x)
        chosen = f"  threshold: {describe_operating_point(points[c.name])}" if c.name in points else ""
        shown = m.display_name(c.name)  # a class file's own words, as the report shows them
        click.echo(f"  {c.name:{width}s} threshold {c.threshold:.3f}" + (f"  ({flags})" if flags else "") + chosen
                   + (f"  shown as: {shown}" if shown else ""))
    if aside:
        click.echo(f"           parity records not covered by the signature, not used here: {', '.join(aside)}")
    click.echo("files")
    tables = {t.sha256 for t in m.files_of("calibration")}
    for f in m.files:
        click.echo(f"  {f.path:28s} {f.kind:12s} {f.precision:12s} {f.size / 1e6:8.2f} MB  sha256 {f.sha256[:12]}"
                   + (f"  CHECKSUM FAILS: {bad[f.path]}" if f.path in bad else "")
                   + ("  parity: not trusted, the file is not the one validated" if f.path in bad
                      and f.kind in ("onnx", "engine") else
                      # the records are in the manifest: a manifest that fails its own checksum was changed, and
                      # a verdict in it may have been written by hand (a review edited a FAIL into a PASS)
                      "  parity: not trusted, the manifest holding the records fails its checksum"
                      if MANIFEST_NAME in bad and f.kind in ("onnx", "engine") else
                      f"  parity {_parity_word(f, m)}" if f.kind in ("onnx", "engine") else "")
                   + _other_table(f, tables))
    if MANIFEST_NAME in bad:
        click.echo(f"  {MANIFEST_NAME:28s} CHECKSUM FAILS: {bad[MANIFEST_NAME]}")
    records = [line for f in m.files if f.kind in ("onnx", "engine")
               for line in _parity_records(f, m, checksum_fails=f.path in bad or MANIFEST_NAME in bad)]
    if records:
        click.echo("parity records (uopsl validate; the report file has every figure)")
        for line in records:
            click.echo(f"  {line}")
    click.echo("checksums  " + ("all files match the manifest" if not bad else
                                f"{len(bad)} file(s) FAIL: do not screen with this bundle (`uopsl-screen verify`)"))
    click.echo("backends here")
    for name, ok, note in table:
        click.echo(f"  {name:9s} {'yes' if ok else 'no ':3s}  {note}")
    if auto is not None:
        click.echo("auto       " + (f"{auto['backend']} {auto['precision']} ({auto['file']}): {auto['reason']}"
                                    if "error" not in auto else f"nothing runs here: {auto['error']}"))
    return 2 if refused else 0  # a bundle error, as `verify` says it: scripts must not read a tampered bundle as fine


def _newer_version(theirs: str, mine: str) -> bool:
    """Whether version ``theirs`` is later than ``mine`` (dotted whole numbers; anything else is never newer)."""
    def parts(v: str) -> tuple[int, ...] | None:
        try:
            return tuple(int(x) for x in v.split("."))
        except ValueError:
            return None

    a, b = parts(theirs), parts(mine)
    return a is not None and b is not None and a > b


def _auto_choice(bundle: Path, m: Any) -> dict[str, Any]:
    """What ``--backend auto`` would run here and why, decided as ``run`` decides it but without loading a model
    or timing INT8 (a device maker's question; before, only ``bench`` and ``Screener.selection`` answered it)."""
    from uopsl.runtime.backends import select_backend
    from uopsl.runtime.errors import UopslError

    try:
        sel = select_backend(bundle, "auto", "auto", manifest=m, measure=False)
    except UopslError as exc:
        return {"error": str(exc)}
    return {"backend": sel.backend, "precision": sel.precision, "file": sel.file, "reason": sel.reason}


def _parity_json(m: Any, bad: dict[str, str]) -> dict[str, Any]:
    """Per model file, what the text of ``info`` says of its parity: the overall word and, per backend, the
    verdict as ``auto`` reads it here (``PASS, not trusted`` with the reason) - not only the raw record."""
    from uopsl.runtime.bundle import MANIFEST as MANIFEST_NAME

    out: dict[str, Any] = {}
    for f in m.files:
        if f.kind not in ("onnx", "engine"):
            continue
        if f.path in bad:
            out[f.path] = {"summary": "not trusted: the file is not the one validated", "backends": {}}
            continue
        if MANIFEST_NAME in bad:
            out[f.path] = {"summary": "not trusted: the manifest holding the records fails its checksum",
                           "backends": {}}
            continue
        found = _parity_runs(f)
        per: dict[str, Any] = {}
        if found is not None and found[0].get("sha256") == f.sha256:
            for b, run in found[1].items():
                verdict, why = _verdict(f, b, run, m)
                per[b] = {"verdict": verdict, "not_trusted_because": why or None}
        out[f.path] = {"summary": _parity_word(f, m), "backends": per}
    return out


def _parity_runs(entry: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None:
    """The parity record `uopsl validate` keeps for ``entry`` and its runs per backend; None when there is none."""
    from uopsl.runtime.bundle import PARITY_KEY

    rec = entry.info.get(PARITY_KEY)
    runs = rec.get("backends") if isinstance(rec, dict) else None
    if not isinstance(runs, dict) or not runs:
        return None
    return rec, {b: (r if isinstance(r, dict) else {}) for b, r in sorted(runs.items())}


def _verdict(entry: Any, backend: str, run: dict[str, Any], manifest: Any, doubt: bool = False) -> tuple[str, str]:
    """``PASS`` / ``FAIL`` / ``PASS, not trusted`` (a PASS ``auto`` ignores, or ``doubt``), and why not trusted."""
    from uopsl.runtime.bundle import parity_status

    verdict = str(run.get("verdict") or ("PASS" if run.get("passed") else "FAIL"))
    if verdict != "PASS":
        return verdict, ""
    trusted, why = parity_status(entry, backend, manifest=manifest)
    return ("PASS", "") if trusted and not doubt else ("PASS, not trusted", "" if trusted else why)


def _other_table(entry: Any, tables: set[str]) -> str:
    """A note for an INT8 file quantized from another calibration table than the bundle's (a review: `calibrate`
    said so once, and nothing else did afterwards)."""
    made_from = entry.info.get("calibration_sha256") if entry.precision.startswith("int8") else None
    if not made_from or not tables or made_from in tables:
        return ""
    return "; quantized from another calibration table than the bundle's: re-make it with uopsl quantize"


def _parity_word(entry: Any, manifest: Any = None) -> str:
    """PASS / FAIL per backend, not validated, or stale, from the record `uopsl validate` keeps in the manifest.

    ``manifest``: the bundle's, so a PASS judged against the bundle's FP32 ONNX file is trusted only while that
    file still carries its PyTorch PASS, as ``auto`` decides.
    """
    from uopsl.runtime.bundle import parity_status

    found = _parity_runs(entry)
    if found is None:
        return "not validated"
    rec, runs = found
    if rec.get("sha256") != entry.sha256:
        return "stale (file changed since validation)"
    words, doubts = [], []
    for b, r in runs.items():
        verdict, why = _verdict(entry, b, r, manifest)  # too few images, looser gates, an old record
        words.append(f"{b} {verdict}")
        if why:
            doubts.append(why)
    overall = "PASS" if parity_status(entry, manifest=manifest)[0] else "not passed"
    return f"{overall} ({', '.join(words)})" + (f"; {doubts[0]}" if doubts else "")


def _parity_records(entry: Any, manifest: Any = None, checksum_fails: bool = False) -> list[str]:
    """One line per backend a file was validated on: verdict, images and their data, reference, date, machine.

    What a validation engineer checks before trusting a verdict: what it was measured on and when, not only PASS.
    A PASS that ``auto`` does not trust, or of a file whose checksum fails, says so, as the files list does.
    """
    found = _parity_runs(entry)
    if found is None:
        return []
    rec, runs = found
    stale = "" if rec.get("sha256") == entry.sha256 else "  [file changed since]"
    lines = []
    for b, r in runs.items():
        verdict, _ = _verdict(entry, b, r, manifest, doubt=checksum_fails)
        data: dict[str, Any] = r["data"] if isinstance(r.get("data"), dict) else {}
        machine: dict[str, Any] = r["machine"] if isinstance(r.get("machine"), dict) else {}
        runtime = ", ".join(f"{k} {v}" for k, v in machine.items() if k not in ("arch", "cpu_int8") and v)
        patients = f" ({r['n_patients']} patients)" if isinstance(r.get("n_patients"), int) else ""
        parts = [f"{r.get('n_images', '?')} images{patients}" + (f" of {data['spec']}" if data.get("spec") else ""),
                 f"truth: {r['truth']}" if r.get("truth") else "",
                 "judged on 95 % bounds" if r.get("judged_on") == "bounds" else "",
                 f"vs {r['reference_kind']}" if r.get("reference_kind") else "",
                 str(r.get("created") or "")[:10],
                 "/".join(str(machine[k]) for k in ("arch", "cpu_int8") if machine.get(k)), runtime]
        reasons = [str(x) for x in r.get("reasons") or ()]
        why = f"; {reasons[0]}" + (f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else "") if reasons and verdict != "PASS" else ""
        lines.append(f"{entry.path:28s} {b:9s} {verdict:10s} " + ", ".join(x for x in parts if x) + why + stale
                     + ("  [checksum fails]" if checksum_fails else ""))
    return lines


@cli.command("verify")
@_bundle_arg
@_trust_options
def verify_cmd(bundle: Path, trusted_keys: Sequence[Path]) -> int:
    """Check the manifest (its fields and its own checksum) and every bundle file against its size and sha256
    (exit 2 naming a bad file); prints the bundle fingerprint to compare with the one its maker sent. Where
    this machine trusts signing keys (--trusted-key, its trusted-keys folder, UOPSL_TRUSTED_KEYS), the
    bundle's signature must be valid and cover it."""
    from uopsl.runtime.bundle import VERIFY_REMEDY, quantize_records, read_manifest_raw, unlisted_files, verify
    from uopsl.runtime.fsio import is_temporary_name
    from uopsl.runtime.errors import BundleError
    from uopsl.runtime.signing import SIGNATURE_FILE, check_signature, trusted_keys_for

    keys = trusted_keys_for(trusted_keys)
    m, raw = read_manifest_raw(bundle)  # one read: the files and the signature are checked against it
    checks = verify(bundle, m, raw)
    for c in checks:
        click.echo(f"{'ok ' if c.ok else 'BAD'} {c.path}" + (f": {c.reason}" if c.reason else ""))
    # uopsl quantize's record beside each INT8 file is the bundle's own (docs/deployment.md), though unlisted.
    unlisted = unlisted_files(bundle, m, own=(SIGNATURE_FILE, *quantize_records(m)))
    stale = [f for f in unlisted if is_temporary_name(f)]
    extra = [f for f in unlisted if f not in stale]
    if extra:  # not a failure (nothing reads them), but they are not verified either
        shown = ", ".join(extra[:10]) + (f" and {len(extra) - 10} more" if len(extra) > 10 else "")
        click.echo(f"note: {len(extra)} file(s) in the bundle folder are not in the manifest, so nothing checks or "
                   f"uses them: {shown}; delete them, or export the bundle again if they belong to it", err=True)
    if stale:
        shown = ", ".join(stale[:5]) + (" ..." if len(stale) > 5 else "")
        click.echo(f"note: {len(stale)} temporary file(s) left by a uopsl write that was stopped ({shown}): nothing "
                   "reads them; the bundle's next update removes them, or delete them while no uopsl command writes "
                   "this bundle", err=True)
    bad = [c for c in checks if not c.ok]
    if bad:
        raise BundleError(
            f"{len(bad)} of {len(checks)} bundle files failed verification: "
            + "; ".join(f"{c.path} ({c.reason})" for c in bad)
            + f". {VERIFY_REMEDY}"
        )
    click.echo(f"all {len(checks)} files verified", err=True)
    sig = check_signature(bundle, keys, raw=raw)
    click.echo(f"signature: {sig.describe()}"
               + ("" if sig.signed or keys else
                  " (fine where no signing key is set up on this machine: the checksums above show the files are "
                  "unchanged; to know where they came from, compare the fingerprint below with the one the "
                  "bundle's maker sent)"), err=True)
    if sig.signature_id:
        click.echo(f"signature id: {sig.signature_id}" + ("" if sig.trusted else " (not verified)"), err=True)
    if keys and not sig.trusted:
        raise BundleError(f"bundle {bundle} is not trusted here: {sig.describe()}")
    # Without a trusted key, checksums prove integrity, not origin: compare this with the value its maker sent.
    # On stdout with the per-file lines, so a script can capture it (`| grep fingerprint`); notes go to stderr.
    click.echo(f"bundle fingerprint (manifest content sha256): {m.content_sha256}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``uopsl-screen``."""
    if argv is None:  # the program itself (not an application calling main() in-process): its own heap setting
        keep_freed_heap()
    return main_entry(cli, argv, prog_name="uopsl-screen")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
