"""Copies of one photograph: found by content, kept on one side of a split, listed by `uopsl duplicates`."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from uopsl.runtime.errors import ConfigError
from uopsl.train.cli import cli
from uopsl.train.datasets.core import Sample
from uopsl.train.datasets.duplicates import (
    DuplicateConfig,
    find_duplicates,
    groups_of,
    signature,
    similar_pairs,
)
from uopsl.train.datasets.splits import group_keys, group_kfold, links_within, patient_split

# TVHL photographs of five patients, none a copy of another (`uopsl duplicates` on the whole set).
ORIGINALS = ("1958_OD_f_1", "1313_OI_f_4", "0004_OD_f_1", "0200_OD_f_1", "1304_OI_f_2")


def _jpeg(bgr: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def _copies(bgr: np.ndarray) -> dict[str, bytes]:
    """What mirrors and export tools do to a photograph."""
    h, w = bgr.shape[:2]
    return {
        "q60": _jpeg(bgr, 60),
        "big": _jpeg(cv2.resize(bgr, (2 * w, 2 * h), interpolation=cv2.INTER_CUBIC)),
        "small": _jpeg(cv2.resize(bgr, (w * 3 // 5, h * 3 // 5), interpolation=cv2.INTER_AREA)),
        "darker": _jpeg((bgr * 0.7).astype(np.uint8)),
        "padded": cv2.imencode(".png", cv2.copyMakeBorder(bgr, 0, 0, w // 4, w // 4, cv2.BORDER_CONSTANT))[1].tobytes(),
    }


@pytest.fixture()
def copies_folder(tvhl_dir: Path, tmp_path: Path) -> tuple[list[Sample], dict[str, str]]:
    """The originals and five altered copies of each, every file filed under a patient of its own."""
    samples: list[Sample] = []
    origin: dict[str, str] = {}
    for k, name in enumerate(ORIGINALS):
        data = (tvhl_dir / "fundus" / f"{name}.jpg").read_bytes()
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        files = {"orig": data, **_copies(bgr)}
        for kind, blob in files.items():
            p = tmp_path / f"{name}-{kind}.{'png' if kind == 'padded' else 'jpg'}"
            p.write_bytes(blob)
            samples.append(Sample(p, ("dr",), patient=f"p{k}-{kind}"))
            origin[str(p)] = name
    return samples, origin


def test_altered_copies_are_found_and_nothing_else(copies_folder: tuple[list[Sample], dict[str, str]],
                                                   tmp_path: Path) -> None:
    samples, origin = copies_folder
    report = find_duplicates(samples, DuplicateConfig(), tmp_path / "cache")
    assert report.skipped == {}
    got = {frozenset(str(samples[i].path) for i in g) for g in report.groups}
    want = {frozenset(p for p, o in origin.items() if o == name) for name in ORIGINALS}
    assert got == want
    assert all(c.similarity >= 0.9 for c in report.pairs)
    # Different photographs stay well below the threshold.
    sims = [c.similarity for c in similar_pairs(np.stack([signature(_model_input(s.path)) for s in samples]), -1.0)
            if origin[str(samples[c.a].path)] != origin[str(samples[c.b].path)]]
    assert max(sims) < 0.8, max(sims)


def _model_input(path: Path) -> np.ndarray:
    from uopsl.runtime.preprocess import PreprocessConfig, preprocess

    return preprocess(path.read_bytes(), PreprocessConfig(size=128)).image


def test_signatures_are_cached_by_content(copies_folder: tuple[list[Sample], dict[str, str]], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    samples, _ = copies_folder
    first = find_duplicates(samples, DuplicateConfig(), tmp_path / "cache")
    assert list((tmp_path / "cache").glob("signatures-*.npz"))
    # Renamed files: the same content, so nothing is decoded again.
    renamed = []
    for i, s in enumerate(samples):
        q = s.path.with_name(f"renamed-{i}{s.path.suffix}")
        s.path.rename(q)
        renamed.append(Sample(q, s.labels, patient=s.patient))
    import uopsl.train.datasets.duplicates as dup

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded although the cache holds this content")

    monkeypatch.setattr(dup, "preprocess", no_decoding)
    again = find_duplicates(renamed, DuplicateConfig(), tmp_path / "cache")
    assert again.groups == first.groups and again.pairs == first.pairs


def test_blank_and_unreadable_photographs_are_skipped_with_a_reason(tmp_path: Path) -> None:
    black = tmp_path / "black.png"
    cv2.imwrite(str(black), np.zeros((300, 300, 3), np.uint8))
    text = tmp_path / "notes.jpg"
    text.write_text("not a photograph")
    samples = [Sample(black, ("normal",)), Sample(text, ("normal",)), Sample(tmp_path / "gone.jpg", ("normal",)),
               Sample(black, ("normal",), modality="oct")]
    report = find_duplicates(samples, DuplicateConfig(), None)
    assert report.groups == () and report.pairs == ()
    assert "too little detail" in report.skipped[0]
    assert report.skipped[1].startswith("not decodable")
    assert report.skipped[2].startswith("unreadable")
    assert "not a fundus photograph" in report.skipped[3]


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan")])
def test_a_threshold_outside_0_1_is_refused(bad: float) -> None:
    with pytest.raises(ConfigError, match="correlation in"):
        DuplicateConfig(threshold=bad)


def test_groups_join_through_pairs() -> None:
    assert groups_of(6, [(4, 1), (1, 2), (5, 3)]) == ((1, 2, 4), (3, 5))
    assert groups_of(3, []) == ()


def _patients(n: int) -> list[Sample]:
    labels = ("normal", "dr", "dme")
    return [Sample(Path(f"/x/{i}.jpg"), (labels[i % 3],), patient=f"{i // 2:03d}") for i in range(n)]


def test_links_keep_copies_on_one_side_and_change_nothing_without_them() -> None:
    samples = _patients(60)
    links = [(0, 59), (10, 31), (31, 44)]
    for seed in range(5):
        plain = group_kfold(samples, 3, seed=seed)
        assert all(np.array_equal(a, b) and np.array_equal(c, d)
                   for (a, c), (b, d) in zip(plain, group_kfold(samples, 3, seed=seed, links=None)))
        folds = group_kfold(samples, 3, seed=seed, links=links)
        fold_of = {int(i): f for f, (_, test) in enumerate(folds) for i in test}
        for a, b in links:
            assert fold_of[a] == fold_of[b]
            # ... and the rest of each patient follows: patient 000 (0, 1) with patient 029 (58, 59)
        assert fold_of[1] == fold_of[58] == fold_of[0]
        split = patient_split(samples, seed=seed, links=links)
        part = {int(i): k for k, idx in enumerate((split.train, split.val, split.test)) for i in idx}
        assert all(part[a] == part[b] for a, b in links)
    keys = group_keys(samples, links)
    assert keys[0] == keys[59] == keys[1] == "000" and keys[10] == keys[31] == keys[44] == "005"
    # Without links, the keys (so every split) are what they always were: the patient, or the image's file.
    unlinked = samples[:3] + [Sample(Path("/x/lone.jpg"), ("dr",))]
    assert group_keys(unlinked) == group_keys(unlinked, []) == ["000", "000", "001", "\x00file-/x/lone.jpg"]
    with pytest.raises(ConfigError, match="outside the 60"):
        group_keys(samples, [(0, 60)])


def test_links_within_a_subset_follow_it_and_drop_links_that_leave_it() -> None:
    samples = _patients(60)
    links = [(0, 59), (10, 31), (31, 44), (2, 40)]
    kept = np.array([0, 2, 10, 31, 44, 59])  # 40 is outside: (2, 40) is already split apart
    assert links_within(links, kept) == [(0, 5), (2, 3), (3, 4)]
    assert links_within(None, kept) is None
    # A split of the subset keeps the mapped links together, as one of the whole set keeps the originals.
    sub = [samples[i] for i in kept]
    for seed in range(5):
        folds = group_kfold(sub, 2, seed=seed, links=links_within(links, kept))
        fold_of = {int(i): f for f, (_, test) in enumerate(folds) for i in test}
        assert fold_of[0] == fold_of[5] and fold_of[2] == fold_of[3] == fold_of[4]


def _csv_dataset(samples: list[Sample], root: Path) -> Path:
    lines = ["path,label,patient"] + [f"{s.path.name},{s.labels[0]},{s.patient}" for s in samples]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def test_the_duplicates_dataset_option_keeps_copies_in_one_fold(copies_folder: tuple[list[Sample], dict[str, str]],
                                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from uopsl.train.commands.common import load_source

    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "usercache"))
    samples, origin = copies_folder
    table = _csv_dataset(samples, samples[0].path.parent)
    seen: dict[str, set[int]] = {}
    for i in (1, 2, 3):
        part = load_source(f"csv:{table}:fold={i}/3,duplicates=0.9")
        for s in part.samples:
            seen.setdefault(origin[str(s.path)], set()).add(i)
    assert all(len(f) == 1 for f in seen.values()), seen
    assert set(seen) == set(ORIGINALS)
    # Without the option, copies filed under other patients are spread over the folds.
    spread = {}
    for i in (1, 2, 3):
        for s in load_source(f"csv:{table}:fold={i}/3").samples:
            spread.setdefault(origin[str(s.path)], set()).add(i)
    assert any(len(f) > 1 for f in spread.values())
    with pytest.raises(ConfigError, match="neither"):
        load_source(f"csv:{table}:duplicates=0.9")
    with pytest.raises(ConfigError, match="correlation"):
        load_source(f"csv:{table}:fold=1/3,duplicates=high")


def test_the_command_lists_copies_and_what_they_are_filed_under(copies_folder: tuple[list[Sample], dict[str, str]],
                                                              tmp_path: Path) -> None:
    samples, _ = copies_folder
    table = _csv_dataset(samples, samples[0].path.parent)
    out = tmp_path / "dups.json"
    res = CliRunner().invoke(cli, ["duplicates", f"csv:{table}", "--folds", "3", "--out", str(out),
                                   "--cache", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    s = report["summary"]
    assert s["photographs"] == len(samples) == s["compared"]
    assert s["sets_of_copies"] == len(ORIGINALS) and s["photographs_in_sets"] == len(samples)
    assert s["sets_across_patients"] == len(ORIGINALS) and s["sets_with_two_labels"] == 0
    assert 0 < s["sets_across_folds"] <= len(ORIGINALS)
    assert all(g["flags"] == ["patients"] for g in report["groups"])
    assert "sets across patients: 5" in res.output


def test_copies_stay_together_in_folds_of_a_split_part(copies_folder: tuple[list[Sample], dict[str, str]],
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The links are found on the whole set; split= keeps a part of it, whose folds index that part (a review
    # found the whole set's indices applied to the part: an error on TVHL, copies split on a small set).
    from uopsl.train.commands.common import load_source

    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "usercache"))
    samples, origin = copies_folder
    table = _csv_dataset(samples, samples[0].path.parent)
    checked = 0
    for seed in range(8):
        whole = load_source(f"csv:{table}:split=train,split_seed={seed},duplicates=0.9")
        part = {origin[str(s.path)] for s in whole.samples}
        assert all(sum(origin[str(s.path)] == o for s in whole.samples) == 6 for o in part)  # all copies, or none
        if len(part) < 2:  # one set of copies in the part: its two folds cannot both hold one (parts are hashed)
            continue
        seen: dict[str, set[int]] = {}
        try:
            for i in (1, 2):
                spec = f"csv:{table}:split=train,split_seed={seed},notfold={i}/2,duplicates=0.9"
                for s in load_source(spec).samples:
                    seen.setdefault(origin[str(s.path)], set()).add(i)
        except ConfigError as exc:  # 5 sets of copies: a fold of the part can be empty, and is said to be
            assert "holds no image" in str(exc)
            continue
        assert set(seen) == part and all(len(f) == 1 for f in seen.values()), (seed, seen)
        checked += 1
    assert checked >= 2


def test_a_publishers_split_is_not_moved_and_the_message_says_so(tmp_path: Path) -> None:
    from uopsl.train.commands.common import load_source

    for part in ("train", "test"):
        folder = tmp_path / "oct2017" / part / "NORMAL"
        folder.mkdir(parents=True)
        for k in range(3):
            cv2.imwrite(str(folder / f"NORMAL-{k}-1.jpeg"), np.full((64, 64, 3), 40 * k, np.uint8))
    with pytest.raises(ConfigError, match="publisher's own"):
        load_source(f"oct2017:{tmp_path / 'oct2017'}:split=test,duplicates=0.9")


def test_a_threshold_of_one_finds_identical_files(tvhl_dir: Path, tmp_path: Path) -> None:
    # float16 signatures correlate with themselves at 1 +- 3e-5; a threshold of 1.0 must still find byte copies.
    samples = []
    for k, name in enumerate(ORIGINALS):
        for copy in range(2):
            q = tmp_path / f"{name}-{copy}.jpg"
            q.write_bytes((tvhl_dir / "fundus" / f"{name}.jpg").read_bytes())
            samples.append(Sample(q, ("dr",), patient=f"{k}-{copy}"))
    report = find_duplicates(samples, DuplicateConfig(threshold=1.0), None)
    assert len(report.groups) == len(ORIGINALS) and all(c.similarity == 1.0 for c in report.pairs)


class _Captured(Exception):
    pass


def _finetune_parts(spec: str, monkeypatch: pytest.MonkeyPatch, *extra: str,
                    said: list[str] | None = None) -> tuple[list[Sample], list[Sample]]:
    """The training and validation samples `uopsl finetune --data SPEC` would use (stopped before any model);
    ``said`` gets what the command printed."""
    import uopsl.train.commands.finetune as ft

    got: list[list[Sample]] = []

    def capture(sources: list[tuple[object, str]], names: object, held_out: list[tuple[object, str]],
                **k: object) -> None:
        got.extend([list(sources[0][0].samples), list(held_out[0][0].samples)])  # type: ignore[attr-defined]
        raise _Captured

    monkeypatch.setattr(ft, "check_classes_in_data", capture)
    res = CliRunner().invoke(cli, ["finetune", "--data", spec, "--out", "unused", *extra])
    assert isinstance(res.exception, _Captured), res.output
    if said is not None:
        said.append(res.output)
    return got[0], got[1]


def test_finetunes_own_validation_part_keeps_copies_together(copies_folder: tuple[list[Sample], dict[str, str]],
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`duplicates=` kept copies apart only in the spec's own split=/fold=: finetune's validation part (15 % of
    --data's patients) ignored it, and put copies on both sides (a review, on TVHL: 1-2 sets in 5 of 7 seeds)."""
    monkeypatch.setenv("UOPSL_CACHE_DIR", str(tmp_path / "usercache"))
    samples, origin = copies_folder
    table = _csv_dataset(samples, samples[0].path.parent)
    checked = 0
    for seed in range(6):
        train, val = _finetune_parts(f"csv:{table}:notfold=1/10,duplicates=0.9", monkeypatch, "--seed", str(seed))
        sides = {origin[str(s.path)] for s in train}, {origin[str(s.path)] for s in val}
        assert sides[0] and sides[1]
        assert not sides[0] & sides[1], (seed, sides)
        checked += 1
    # Without the option the same draws split copies (what the option is for).
    split_apart = 0
    for seed in range(6):
        train, val = _finetune_parts(f"csv:{table}:notfold=1/10", monkeypatch, "--seed", str(seed))
        split_apart += bool({origin[str(s.path)] for s in train} & {origin[str(s.path)] for s in val})
    assert checked == 6 and split_apart > 0


def test_a_part_without_patient_ids_does_not_depend_on_the_row_order(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Images without a patient id were keyed by their row number: the same table sorted otherwise gave another
    validation part (and folds), and finetune did not say that its split is by image."""
    rows = [(f"img{i:02d}.png", "dr" if i % 2 else "normal") for i in range(20)]
    for i, _ in enumerate(rows):
        cv2.imwrite(str(tmp_path / f"img{i:02d}.png"), np.full((32, 32, 3), i * 10, np.uint8))
    forward, backward = tmp_path / "fwd.csv", tmp_path / "bwd.csv"
    forward.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in rows))
    backward.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in reversed(rows)))
    said: list[str] = []
    a = _finetune_parts(f"csv:{forward}", monkeypatch, said=said)
    assert "finetune's validation part (about 15 % of --data's photographs, whole patients) takes each on its own" in said[0]
    b = _finetune_parts(f"csv:{backward}", monkeypatch)
    assert {s.path for s in a[1]} == {s.path for s in b[1]} and a[1]
    samples = [Sample(tmp_path / p, (c,)) for p, c in rows]
    folds = [sorted(str(samples[i].path) for i in te) for _, te in group_kfold(samples, 3)]
    folds_reversed = [sorted(str(samples[::-1][i].path) for i in te) for _, te in group_kfold(samples[::-1], 3)]
    assert folds == folds_reversed


def test_patient_ids_that_differ_only_in_case_or_leading_zeros_are_named(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from uopsl.train.commands.common import load_source

    ids = ["1223", "01223", "P007", "p7", "0044", "0045"]  # zeros inside an id too (a mutation audit, session 34)
    for i in range(len(ids)):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((32, 32, 3), i * 20, np.uint8))
    table = tmp_path / "t.csv"
    table.write_text("path,label,patient\n" + "".join(f"{i}.png,dr,{p}\n" for i, p in enumerate(ids)))
    with caplog.at_level(logging.WARNING):
        load_source(f"csv:{table}")
    assert "2 set(s) of patient ids differ only in letter case or leading zeros ('01223' / '1223'; 'P007' / 'p7')" \
        in caplog.text
    caplog.clear()
    table.write_text("path,label,patient\n" + "".join(f"{i}.png,dr,{p}\n" for i, p in enumerate(ids[4:])))
    with caplog.at_level(logging.WARNING):
        load_source(f"csv:{table}")
    assert "differ only" not in caplog.text
