"""``uopsl-screen``: run (exit codes, outputs, resume after a kill), watch, bench, info, verify."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tinybundle import fundus_jpeg, make_bad_zoo, screen_run_in_progress, tiny_bundle  # noqa: F401 - session fixture
from uopsl.runtime.api import Screener
from uopsl.runtime.cli import main
from uopsl.runtime.watch import StableFiles, WatchConfig, watch_folder


def _csv(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", encoding="utf-8-sig", newline="") as fh:  # written with a BOM, for Excel
        return list(csv.DictReader(fh))


def _jsonl(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


def _good(folder: Path, n: int, start: int = 0) -> list[Path]:
    return [fundus_jpeg(folder / f"img{i:04d}.jpg", seed=i % 30) for i in range(start, start + n)]


@pytest.fixture(autouse=True)
def _no_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # 'auto' may time INT8 once per machine; keep that out of the user's cache.
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "cache"))


def test_run_exit_1_with_bad_files_one_row_per_input(tiny_bundle: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    good = _good(tmp_path / "in", 6)
    zoo = make_bad_zoo(tmp_path / "in" / "bad")
    missing = zoo["missing.jpg"][0]
    out = tmp_path / "out"
    rc = main(["run", str(tiny_bundle), str(tmp_path / "in"), str(missing), "--out", str(out),
               "--backend", "ort-cpu", "--batch", "4", "--threads", "1"])
    assert rc == 1
    rows = _csv(out)
    assert len(rows) == len(good) + len(zoo) == len(_jsonl(out))
    by_name = {Path(r["source"]).name: r for r in rows}
    for name, (_, status) in zoo.items():
        assert by_name[name]["status"] == status, name
        if status != "ok":
            assert by_name[name]["reasons"], name
    assert all(by_name[p.name]["status"] == "ok" and by_name[p.name]["refer"] in ("yes", "no") for p in good)
    assert (out / "report.html").is_file()
    assert len(list((out / "overlays").glob("*.png"))) == sum(r["status"] == "ok" for r in rows)
    assert "unreadable" in capsys.readouterr().err


def test_run_exit_0_when_all_screened_and_rerun_skips(tiny_bundle: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _good(tmp_path / "in", 5)
    out = tmp_path / "out"
    args = ["run", str(tiny_bundle), str(tmp_path / "in"), "--out", str(out), "--backend", "ort-cpu", "--no-overlays"]
    assert main(args) == 0
    first = _jsonl(out)
    referred = sum(bool(r["refer"]) for r in first)
    assert referred > 0, "the test needs referred photographs (a resumed run once reported 0)"
    summary = f"5 images: {referred} refer, {5 - referred} no referable finding"
    assert summary in capsys.readouterr().err
    assert main(args) == 0
    assert _jsonl(out) == first and len(_csv(out)) == 5
    assert not (out / "overlays").exists()
    # The rerun screened nothing new, but its summary still counts what the first run decided.
    assert summary + ", 0 ungradable, 0 unreadable or not screened (0 screened now, 5 from an earlier run)" in capsys.readouterr().err


def test_usage_and_bundle_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nobundle"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such bundle folder" in err
    assert main(["run", str(tmp_path)]) == 2  # missing --out
    assert main(["run", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "o"), "--batch", "0"]) == 2


def test_resume_after_truncated_last_line(tiny_bundle: Path, tmp_path: Path) -> None:
    """A power loss mid-write: the last row is half written. The rerun repairs it, no duplicates."""
    images = _good(tmp_path / "in", 10)
    out = tmp_path / "out"
    args = ["run", str(tiny_bundle), str(tmp_path / "in"), "--out", str(out), "--backend", "ort-cpu",
            "--batch", "2", "--no-overlays"]
    assert main(args) == 0
    lines = (out / "results.jsonl").read_bytes().splitlines(keepends=True)
    (out / "results.jsonl").write_bytes(b"".join(lines[:4]) + lines[4][: len(lines[4]) // 2])
    assert main(args) == 0
    rows = _jsonl(out)
    assert sorted(r["source"] for r in rows) == sorted(str(p) for p in images)
    assert len(_csv(out)) == 10


def test_resume_after_kill_gives_exactly_one_row_per_image(tiny_bundle: Path, tmp_path: Path) -> None:
    images = _good(tmp_path / "in", 60)
    out = tmp_path / "out"
    proc, rerun = screen_run_in_progress(tiny_bundle, tmp_path / "in", out, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    proc.kill()
    proc.wait()
    done_before = len(_jsonl(out))
    assert 0 < done_before < 60, "the run was not killed halfway; make it slower"
    assert main(rerun) == 0
    rows = _jsonl(out)
    assert len(rows) == 60 and len({r["key"] for r in rows}) == 60
    assert sorted(r["source"] for r in rows) == sorted(str(p) for p in images)
    assert len(_csv(out)) == 60


def test_a_file_copied_again_keeps_one_row(tiny_bundle: Path, tmp_path: Path) -> None:
    (p,) = _good(tmp_path / "in", 1)
    out = tmp_path / "out"
    args = ["run", str(tiny_bundle), str(p), "--out", str(out), "--backend", "ort-cpu", "--no-overlays"]
    assert main(args) == 0
    p.write_bytes(p.read_bytes())  # the same photograph copied from the camera again: a new mtime
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert main(args) == 0
    assert len(_jsonl(out)) == 2 and len(_csv(out)) == 1
    assert _csv(out)[0]["file_replaced"] == ""


def test_another_photograph_under_a_used_name_keeps_both_rows(tiny_bundle: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Cameras restart their numbering: IMG_0001.jpg can be next week's patient; last week's result stays."""
    (p,) = _good(tmp_path / "in", 1)
    out = tmp_path / "out"
    args = ["run", str(tiny_bundle), str(p), "--out", str(out), "--backend", "ort-cpu", "--no-overlays"]
    assert main(args) == 0
    fundus_jpeg(p, seed=7)
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10**9))
    capsys.readouterr()
    assert main(args) == 0
    assert "another photograph than the one screened under this name" in capsys.readouterr().err
    rows = _csv(out)
    assert len(rows) == 2 and [r["file_replaced"] for r in rows] == ["yes", ""]
    first, second = _jsonl(out)
    assert first["id"] != second["id"] and second["id"].startswith(first["id"])
    assert (second["backend"], second["precision"], second["model_file"]) == ("ort-cpu", "fp32", "model.onnx")
    thumbs = sorted(x.stem for x in (out / "thumbs").iterdir())
    assert thumbs == sorted([first["id"], second["id"]]), "each photograph keeps its own thumbnail"
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "replaced by another photograph of the same name" in page
    assert main(args) == 0 and len(_csv(out)) == 2, "a rerun screens nothing again"


def test_stable_files_ignores_a_file_still_being_written(tmp_path: Path) -> None:
    now = [0.0]
    tracker = StableFiles(tmp_path, settle_ms=500, clock=lambda: now[0])
    part = tmp_path / "cam.jpg"
    part.write_bytes(b"\xff\xd8partial")
    assert tracker.poll() == []
    now[0] = 0.3
    with open(part, "ab") as fh:
        fh.write(b"more")
    assert tracker.poll() == []  # changed: the clock restarts
    now[0] = 0.7
    assert tracker.poll() == []  # stable for 0.4 s only
    now[0] = 0.81
    assert tracker.poll() == [part]
    now[0] = 2.0
    assert tracker.poll() == []  # taken once
    (tmp_path / ".tmp.jpg").write_bytes(b"x")
    (tmp_path / "x.jpg.part").write_bytes(b"x")
    now[0] = 5.0
    assert tracker.poll() == []
    now[0] = 9.0
    assert tracker.poll() == []


def test_watch_screens_new_images_and_waits_for_partial_ones(tiny_bundle: Path, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    out = tmp_path / "out"
    src = _good(tmp_path / "src", 2)
    data = src[1].read_bytes()
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        cfg = WatchConfig(settle_ms=400, poll_s=0.05, max_images=2, timeout_s=30, refresh_s=0)
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(s=watch_folder(s, inbox, out, cfg)))
        t.start()
        shutil.copy(src[0], inbox / "first.jpg")
        with open(inbox / "second.jpg", "wb") as fh:  # a camera writing slowly
            for i in range(0, len(data), len(data) // 6):
                fh.write(data[i : i + len(data) // 6])
                fh.flush()
                time.sleep(0.15)
        t.join(60)
    assert not t.is_alive()
    rows = _jsonl(out)
    assert sorted(Path(r["source"]).name for r in rows) == ["first.jpg", "second.jpg"]
    assert all(r["status"] == "ok" for r in rows), rows
    assert result["s"].exit_code == 0 and (out / "report.html").exists() and len(_csv(out)) == 2


def test_watch_counts_a_file_screened_again_once(tiny_bundle: Path, tmp_path: Path) -> None:
    """A half-copied file (the copy paused longer than the settle time), then the whole one: one image, ok."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    out = tmp_path / "out"
    data = _good(tmp_path / "src", 1)[0].read_bytes()
    with Screener(tiny_bundle, "ort-cpu", threads=1, batch_size=1) as s:
        cfg = WatchConfig(settle_ms=100, poll_s=0.02, timeout_s=4, refresh_s=0)
        result: dict = {}
        seen: list[str] = []
        t = threading.Thread(target=lambda: result.update(
            s=watch_folder(s, inbox, out, cfg, on_result=lambda r: seen.append(r.status))))
        t.start()
        (inbox / "slow.jpg").write_bytes(data[: len(data) // 2])
        deadline = time.monotonic() + 20
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
        (inbox / "slow.jpg").write_bytes(data)
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        t.join(60)  # the watch stops on its own timeout
    assert not t.is_alive()
    assert seen == ["error", "ok"], seen
    summary = result["s"]
    assert (summary.screened, summary.counts) == (1, {"ok": 1, "ungradable": 0, "error": 0})
    (row,) = _csv(out)
    assert row["status"] == "ok" and summary.refer == (row["refer"] == "yes") and summary.exit_code == 0


def test_watch_cli_stops_on_timeout(tiny_bundle: Path, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    _good(inbox, 1)
    rc = main(["watch", str(tiny_bundle), str(inbox), "--out", str(tmp_path / "out"), "--backend", "ort-cpu",
               "--settle-ms", "50", "--poll", "0.05", "--timeout", "1"])
    assert rc == 0 and len(_csv(tmp_path / "out")) == 1


def test_info_verify_and_tampered_bundle(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    assert "model.int8.onnx" in out and "int8-qdq-u8" in out and "ort-cpu" in out and "tensorrt" in out
    assert "parity not validated" in out  # no `uopsl validate` record in this bundle yet
    assert "checksums  all files match the manifest" in out and "CHECKSUM FAILS" not in out
    # What auto would run here and why, without loading a model (a device-maker review, session 45).
    from uopsl.runtime.backends import select_backend

    sel = select_backend(tiny_bundle, "auto", "auto", measure=False)
    assert f"auto       {sel.backend} {sel.precision} ({sel.file}): {sel.reason}" in out
    assert main(["info", str(tiny_bundle), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["manifest"]["model_name"] == "tiny" and info["checksums_ok"] is True
    assert info["auto"] == {"backend": sel.backend, "precision": sel.precision, "file": sel.file, "reason": sel.reason}
    assert main(["verify", str(tiny_bundle)]) == 0
    bad = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bad)
    with open(bad / "model.int8.onnx", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02")
    capsys.readouterr()
    assert main(["verify", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "model.int8.onnx" in err and "sha256" in err and err.count("\n") == 1
    # run refuses a tampered bundle too; info still describes it, and says which file fails
    assert main(["run", str(bad), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    capsys.readouterr()
    assert main(["info", str(bad)]) == 2  # still described in full, but a script must not read it as fine
    out = capsys.readouterr().out
    assert "CHECKSUM FAILS: sha256 differs" in out and "1 file(s) FAIL: do not screen with this bundle" in out
    assert "parity: not trusted, the file is not the one validated" in out
    assert main(["info", str(bad), "--json"]) == 2
    assert list(json.loads(capsys.readouterr().out)["checksum_failures"]) == ["model.int8.onnx"]


def test_bench_writes_table_and_json(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    js = tmp_path / "bench.json"
    _good(tmp_path / "photos", 3)
    rc = main(["bench", str(tiny_bundle), "--backend", "ort-cpu", "--precision", "fp32,int8", "--batch", "1,2",
               "--iters", "3", "--warmup", "1", "--images", str(tmp_path / "photos"), "--e2e-images", "8",
               "--json", str(js)])
    assert rc == 0
    res = json.loads(js.read_text())
    cases = {(c["precision"], c["batch"]) for c in res["cases"]}
    assert cases == {("fp32", 1), ("fp32", 2), ("int8-qdq-u8", 1), ("int8-qdq-u8", 2)}
    for c in res["cases"]:
        assert 0 < c["p50_ms"] <= c["p90_ms"] <= c["p99_ms"] and c["throughput_ips"] > 0
    assert res["preprocess"]["p50_ms"] > 0 and res["preprocess"]["images"] == 3 and len(res["e2e"]) == 2
    assert all(e["images"] == 8 and e["ratio"] > 0 for e in res["e2e"])
    # A worker also runs the quality gate before a photograph reaches the model: the CPU it costs is both.
    pre = res["preprocess"]
    gate, both = pre["quality_gate"], pre["before_inference"]
    assert gate["calls"] == both["calls"] == 3 and gate["p50_ms"] > 0
    assert both["mean_ms"] == pytest.approx(pre["mean_ms"] + gate["mean_ms"], abs=2e-3)
    out = capsys.readouterr().out
    assert "p50 ms" in out and f"a worker's whole share of a photograph (both): p50 {both['p50_ms']:.2f} ms" in out


def test_info_shows_a_pass_that_auto_does_not_trust_and_why() -> None:
    """A smoke run's PASS (24 images) must not read like the PASS that lets `auto` take an INT8 file."""
    from uopsl.runtime.bundle import FileEntry
    from uopsl.runtime.cli import _parity_word

    runs = {"openvino": {"passed": True, "verdict": "PASS", "n_images": 24},
            "ort-cpu": {"passed": False, "verdict": "FAIL", "n_images": 200}}
    entry = FileEntry("model.int8.onnx", "onnx", "int8-qdq-u8", sha256="abc",
                      info={"parity": {"sha256": "abc", "backends": runs}})
    word = _parity_word(entry)
    assert word.startswith("not passed (openvino PASS, not trusted, ort-cpu FAIL); ")
    assert "model.int8.onnx" in word.split("; ", 1)[1]


def test_info_lists_what_each_parity_verdict_was_measured_on() -> None:
    """A verdict without its data, reference, date and machine cannot be signed (validation review)."""
    from uopsl.runtime.bundle import FileEntry
    from uopsl.runtime.cli import _parity_records

    runs = {"ort-cpu": {"passed": False, "verdict": "FAIL", "n_images": 300, "truth": "labels",
                        "data": {"spec": "csv:clinic.csv"}, "reference_kind": "pytorch",
                        "created": "2026-11-29T20:01:22+00:00",
                        "machine": {"arch": "x86_64", "onnxruntime": "1.32.0", "cpu_int8": "x86-vnni"},
                        "reasons": ["flip_rate 0.01 > 0.005", "auc_drop 0.02 > 0.005"]},
            "openvino": {"passed": True, "verdict": "PASS", "n_images": 300, "reasons": []}}
    entry = FileEntry("model.int8.onnx", "onnx", "int8-qdq-u8", sha256="abc",
                      info={"parity": {"sha256": "abc", "backends": runs}})
    openvino, ort_cpu = _parity_records(entry)
    # A PASS without the record auto needs (gates, data, reference) is shown as the files list shows it.
    assert openvino.split() == ["model.int8.onnx", "openvino", "PASS,", "not", "trusted", "300", "images"]
    assert ort_cpu.split(None, 3)[:3] == ["model.int8.onnx", "ort-cpu", "FAIL"]
    assert ort_cpu.endswith("300 images of csv:clinic.csv, truth: labels, vs pytorch, 2026-11-29, x86_64/x86-vnni, "
                            "onnxruntime 1.32.0; flip_rate 0.01 > 0.005 (+1 more)")
    assert all(line.endswith("[checksum fails]") for line in _parity_records(entry, checksum_fails=True))
    # A verdict judged on the 95 % bounds (`uopsl validate --judge-on bounds`) says so.
    bounds = {"ort-cpu": {**runs["ort-cpu"], "judged_on": "bounds"}}
    (line,) = _parity_records(FileEntry("model.int8.onnx", "onnx", "int8-qdq-u8", sha256="abc",
                                        info={"parity": {"sha256": "abc", "backends": bounds}}))
    assert "truth: labels, judged on 95 % bounds, vs pytorch" in line
    changed = FileEntry("model.int8.onnx", "onnx", "int8-qdq-u8", sha256="def",
                        info={"parity": {"sha256": "abc", "backends": runs}})
    assert all(line.endswith("[file changed since]") for line in _parity_records(changed))
    assert _parity_records(FileEntry("model.onnx", "onnx", "fp32", sha256="abc")) == []


def test_watch_lists_again_only_the_folders_that_changed(tmp_path: Path) -> None:
    """A drop folder holds months of photographs: listing and stat-ing all of them every 0.5 s took ~0.3 s of CPU
    per poll at 20,000 files. A poll now lists again only folders whose time changed, and for 3 s after a change
    at every poll (a file created in the same timestamp tick could hide: FAT 2 s, Linux before 6.13 a few ms)."""
    now = [0.0]
    # check_all_up_to=0: as in a tree of thousands of folders, only those changed in the last hot_s are watched.
    tracker = StableFiles(tmp_path, settle_ms=0, clock=lambda: now[0], rescan_s=1000, hot_s=100, check_all_up_to=0)

    def settle(folder: Path, ago_s: float = 3600) -> None:  # give the folder a time of its own, in the past
        t = time.time() - ago_s
        os.utime(folder, (t, t))

    old = [tmp_path / "day1" / f"{i}.jpg" for i in range(3)] + [tmp_path / "day2" / "a.jpg"]
    for p in old:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"\xff\xd8old")
    for folder in (tmp_path / "day1", tmp_path / "day2", tmp_path):
        settle(folder)
    assert tracker.poll() == [] and tracker.listings == 3
    now[0] = 5.0
    assert sorted(tracker.poll()) == old and tracker.listings == 3  # settled files found without listing again
    now[0] = 6.0
    assert tracker.poll() == [] and tracker.listings == 3  # nothing changed: nothing listed
    new = tmp_path / "day1" / "new.jpg"
    new.write_bytes(b"\xff\xd8new")
    settle(tmp_path / "day1", ago_s=10)
    now[0] = 7.0
    assert tracker.poll() == [] and tracker.listings == 4  # only day1 listed again
    now[0] = 8.0
    assert tracker.poll() == [new] and tracker.listings == 5  # changed 1 s ago: listed at every poll for 3 s
    now[0] = 11.0
    assert tracker.poll() == [] and tracker.listings == 5
    # A file created in the same timestamp tick as the last change leaves the folder's time as it was.
    b = tmp_path / "day2" / "b.jpg"
    b.write_bytes(b"\xff\xd8b")
    now[0] = 12.0
    assert tracker.poll() == [] and tracker.listings == 6
    sig = os.stat(tmp_path / "day2")
    c = tmp_path / "day2" / "c.jpg"
    c.write_bytes(b"\xff\xd8c")
    os.utime(tmp_path / "day2", ns=(sig.st_atime_ns, sig.st_mtime_ns))  # as a coarse clock would leave it
    now[0] = 13.0
    assert tracker.poll() == [b] and tracker.listings == 7  # listed again within 3 s of the change: c seen
    now[0] = 14.0
    assert tracker.poll() == [c]
    # A folder quiet for longer than hot_s is looked at only by the full check (rescan_s).
    now[0] = 150.0
    late = tmp_path / "day1" / "late.jpg"
    late.write_bytes(b"\xff\xd8late")
    settle(tmp_path / "day1", ago_s=5)  # another time than the last change's, even on FAT's 2 s clock
    listed = tracker.listings
    assert tracker.poll() == [] and tracker.listings == listed  # day1 is cold: not looked at
    # A photograph rewritten in place changes no folder: the full check finds it too.
    st = old[0].stat()
    old[0].write_bytes(b"\xff\xd8rewritten, longer")
    os.utime(old[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    now[0] = 1001.0
    assert tracker.poll() == [] and tracker.listings == listed + 3  # the full check lists every folder ...
    now[0] = 1002.0
    assert sorted(tracker.poll()) == sorted([old[0], late])  # ... and the two are taken once settled


def test_watch_lists_a_folder_again_when_its_time_never_moves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Some file systems keep a folder's time (FAT's root, some shares): the full check lists it anyway, and a
    folder that could not be listed is tried again at the next poll."""
    now = [0.0]
    tracker = StableFiles(tmp_path, settle_ms=0, clock=lambda: now[0], rescan_s=30)
    frozen = os.stat(tmp_path)
    tracker.poll()
    p = tmp_path / "IMG_0001.jpg"
    p.write_bytes(b"\xff\xd8x")
    os.utime(tmp_path, ns=(frozen.st_atime_ns, frozen.st_mtime_ns))
    now[0] = 10.0
    assert tracker.poll() == []  # nothing shows the new file ...
    now[0] = 31.0
    tracker.poll()  # ... until the full check lists the folder
    now[0] = 32.0
    assert tracker.poll() == [p]
    sub = tmp_path / "share"
    sub.mkdir()
    (sub / "a.jpg").write_bytes(b"\xff\xd8a")
    import uopsl.runtime.watch as watch_mod

    real = watch_mod.list_folder
    failed: list[Path] = []

    def list_failing_once(folder: Path, state: object) -> list:  # a share reconnecting, a permission fixed later
        if folder == sub and not failed:
            failed.append(folder)
            return []
        return real(folder, state)  # type: ignore[arg-type]

    monkeypatch.setattr(watch_mod, "list_folder", list_failing_once)
    now[0] = 40.0
    tracker.poll()
    assert failed == [sub]
    now[0] = 50.0
    tracker.poll()  # its time has not changed since: listed again because the last listing failed
    now[0] = 51.0
    assert tracker.poll() == [sub / "a.jpg"]


def test_watch_sees_a_photograph_in_a_folder_quiet_for_hours_at_once(tmp_path: Path) -> None:
    """A flat drop folder at a quiet clinic: a photograph after hours of nothing is taken at the next polls."""
    now = [0.0]
    tracker = StableFiles(tmp_path, settle_ms=0, clock=lambda: now[0])
    assert tracker.poll() == []
    now[0] = 5 * 3600.0
    tracker.poll()
    p = tmp_path / "late.jpg"
    p.write_bytes(b"\xff\xd8late")
    t = time.time() - 10
    os.utime(tmp_path, (t, t))  # not racy: only the folder's new time can show the file
    now[0] += 0.5
    tracker.poll()
    now[0] += 0.5
    assert tracker.poll() == [p]



def test_watch_takes_a_photograph_removed_and_written_again_between_full_checks(tmp_path: Path) -> None:
    """Long after it was taken (no longer looked at between full checks), a photograph is removed and another
    one written under its name: taken at the next polls, not at the next full check."""
    now = [0.0]
    tracker = StableFiles(tmp_path, settle_ms=0, clock=lambda: now[0], rescan_s=10)
    p = tmp_path / "IMG_0001.jpg"
    p.write_bytes(b"\xff\xd8first")
    tracker.poll()
    now[0] = 1.0
    assert tracker.poll() == [p]
    now[0] = 11.0
    assert tracker.poll() == []  # a full check; p is quiet from now on
    p.unlink()
    now[0] = 12.0
    assert tracker.poll() == []
    p.write_bytes(b"\xff\xd8second photograph, under the camera's restarted numbering")
    now[0] = 13.0
    tracker.poll()
    now[0] = 14.0
    assert tracker.poll() == [p]  # before the next full check at 21


def test_info_says_how_each_threshold_was_chosen(tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A validation review: where a threshold came from was nowhere in the bundle; export now records it."""
    from dataclasses import replace

    from uopsl.runtime.bundle import read_manifest, write_manifest

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    m = read_manifest(bundle)
    first, second = m.class_names[:2]
    points = [{"name": first, "threshold": m.classes[0].threshold, "method": "target_sensitivity",
               "target_sensitivity": 0.9, "n_positive": 31, "n_negative": 69, "source": "checkpoint validation data"},
              {"name": second, "threshold": m.classes[1].threshold, "source": "chosen on no data (a default)"}]
    write_manifest(bundle, replace(m, notes={**m.notes, "operating_points": points}))
    assert main(["info", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "threshold: target sensitivity 0.90 on 31 positive / 69 negative validation images" in out
    assert "threshold: chosen on no data (a default)" in out


def test_watch_prints_one_line_per_photograph_and_each_cause_once(tiny_bundle: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # A session-45 review: every photograph's line was followed by the batch's "screened 1 new ..." INFO line,
    # and a cause whose words are its tag was printed twice ("(blurred; blurred)", "(too dark; too_dark)").
    import cv2
    import numpy as np

    from uopsl.runtime.cli import why

    inbox = tmp_path / "inbox"
    _good(inbox, 2)
    cv2.imwrite(str(inbox / "dark.jpg"), np.full((512, 512, 3), 3, np.uint8))
    rc = main(["watch", str(tiny_bundle), str(inbox), "--out", str(tmp_path / "out"), "--backend", "ort-cpu",
               "--settle-ms", "50", "--poll", "0.05", "--timeout", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and len(_csv(tmp_path / "out")) == 3
    assert "screened 1 new" not in err
    dark = [line for line in err.splitlines() if str(inbox / "dark.jpg") in line]
    assert len(dark) == 1 and "ungradable, retake" in dark[0], err
    assert why(["blurred"]) == "blurred" and why(["too_dark"]) == "too dark"
    assert why(["too_dark", "low_contrast"]) == "too dark; low_contrast"


def test_info_says_what_to_install_when_onnx_runtime_is_missing(tiny_bundle: Path) -> None:
    # A device with only the core wheel read "ort-cpu  no  model.onnx (fp32), ..." with no hint (session 45).
    from uopsl.runtime.backends import Availability, backend_table

    rows = {name: (ok, note) for name, ok, note in backend_table(tiny_bundle, availability=Availability(()))}
    ok, note = rows["ort-cpu"]
    assert not ok and note.startswith("needs ONNX Runtime: pip install 'onnxruntime>=1.17'") and "model.onnx" in note


def test_a_watch_stopped_before_its_first_look_says_what_the_folder_lists(tiny_bundle: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # A session-45 review: "0 images: 0 refer ... (0 screened now, 0 from an earlier run)" while results.csv
    # listed the 3 photographs an earlier watch had screened.
    inbox = tmp_path / "inbox"
    _good(inbox, 3)
    out = tmp_path / "out"
    args = ["watch", str(tiny_bundle), str(inbox), "--out", str(out), "--backend", "ort-cpu", "--poll", "0.05"]
    assert main([*args, "--settle-ms", "50", "--timeout", "2"]) == 0 and len(_csv(out)) == 3
    capsys.readouterr()
    assert main([*args, "--settle-ms", "60000", "--timeout", "0"]) == 0
    err = capsys.readouterr().err
    assert "results.csv lists 3 photographs in all, earlier runs' included" in err, err


def test_a_run_given_part_of_a_folder_says_what_the_folder_lists(tiny_bundle: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # A session-57 review: `run` on one photograph of a screened folder printed "1 image: ..." while report.html
    # and results.csv showed the folder's 3; the line saying so was printed by `watch` only.
    inbox = tmp_path / "inbox"
    files = _good(inbox, 3)
    out = tmp_path / "out"
    assert main(["run", str(tiny_bundle), str(inbox), "--out", str(out), "--backend", "ort-cpu"]) == 0
    capsys.readouterr()
    assert main(["run", str(tiny_bundle), str(files[0]), "--out", str(out), "--backend", "ort-cpu"]) == 0
    err = capsys.readouterr().err
    assert any(line.startswith("1 image: ") for line in err.splitlines()) and len(_csv(out)) == 3, err
    assert "results.csv lists 3 photographs in all, earlier runs' included" in err, err
    # A run of the whole folder again counts what the report shows: no such line.
    assert main(["run", str(tiny_bundle), str(inbox), "--out", str(out), "--backend", "ort-cpu"]) == 0
    assert "in all" not in capsys.readouterr().err


def test_a_watch_stopping_names_the_files_it_saw_but_did_not_screen(tiny_bundle: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # A session-57 review: an empty file dropped into the folder must stay empty 10 x --settle-ms before it is
    # taken; a watch stopped sooner (--timeout 2) gave it neither a row nor a word, so the summary read as if it
    # covered the folder.
    inbox = tmp_path / "inbox"
    _good(inbox, 1)
    (inbox / "zero.jpg").write_bytes(b"")
    out = tmp_path / "out"
    rc = main(["watch", str(tiny_bundle), str(inbox), "--out", str(out), "--backend", "ort-cpu",
               "--settle-ms", "300", "--poll", "0.05", "--timeout", "1"])
    err = capsys.readouterr().err
    assert rc == 0 and len(_csv(out)) == 1
    assert "1 file seen but not screened before the watch stopped" in err and "zero.jpg" in err, err
    assert "an empty file for 3 s" in err, err
    # Once it has stayed empty long enough it gets its row, and nothing is left waiting.
    rc = main(["watch", str(tiny_bundle), str(inbox), "--out", str(out), "--backend", "ort-cpu",
               "--settle-ms", "100", "--poll", "0.05", "--timeout", "2"])
    err = capsys.readouterr().err
    assert rc == 1 and len(_csv(out)) == 2 and "seen but not screened" not in err, err
