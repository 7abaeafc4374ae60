"""Session 37's mutation audit of the training workflow and its data: tests for the mutants that survived.

The area: ``uopsl.train.workflow`` (run identities, resume and reuse of an ``--out`` folder, provenance
records), ``uopsl.train.stages``, ``uopsl.train.torchdata``, the few-shot and split helpers behind
``uopsl.train.data`` and the ``finetune --shots`` wiring, and ``uopsl.train.synthetic``. Each test names the
single-point bug it catches (applied alone to a scratch copy, the test failed; on the unmodified code it
passes). Expected values are worked out by hand, or by a plain re-implementation written out in the test.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from uopsl.runtime.errors import ConfigError
from uopsl.train import data as D
from uopsl.train import synthetic as sy


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ the synthetic generator


def test_class_weights_that_are_all_zero_are_refused() -> None:
    """Mutant: ``sum(w) <= 0`` loosened to ``< 0``. All-zero weights then passed the check and drawing a
    diseased image divided 0 by 0 (NaN class probabilities) deep inside the generator. The docstring asks for
    non-negative weights "with a positive sum"; a sum of 0 is not positive."""
    with pytest.raises(ConfigError, match="positive sum"):
        sy.SynthConfig(class_weights=(0.0, 0.0, 0.0, 0.0))


def test_a_zero_weight_class_is_never_drawn_as_the_extra_label() -> None:
    """Mutant: the extra label drawn among every other class, zero-weight ones included. With weights
    (1, 0, 0, 0) and ``p_extra = 1`` every diseased image asks for an extra class and there is none of
    positive weight: it must stay ``("dr",)``, not crash on a 0/0 probability or add a class the user
    weighted out."""
    cfg = sy.SynthConfig(class_weights=(1.0, 0.0, 0.0, 0.0), p_extra=1.0, co_occurrence=(), p_normal=0.0)
    rng = np.random.default_rng(0)
    assert {sy.sample_labels(rng, cfg) for _ in range(50)} == {("dr",)}


def test_fundus_and_oct_pools_draw_their_labels_from_streams_of_their_own(tmp_path: Path) -> None:
    """Mutant: the modality left out of each image's random stream (the module docstring: "derived from
    (seed, modality, index)"). Fundus image i and OCT scan i then drew the very same labels, a hidden
    pairing of the two pools that pre-training treats as unpaired. With 12 of each, identical label
    sequences by chance are unlikely (and the seed is fixed: the check is deterministic)."""
    csv_path = sy.make_dataset(tmp_path / "ds", 12, 12, sy.SynthConfig(size=64, seed=0), write_masks=False,
                               progress=False)
    rows = _rows(csv_path)
    fundus = [r["labels"] for r in rows if r["modality"] == "fundus"]
    oct_ = [r["labels"] for r in rows if r["modality"] == "oct"]
    assert len(fundus) == len(oct_) == 12
    assert fundus != oct_


def test_patient_ids_carry_the_seed(tmp_path: Path) -> None:
    """Mutant: the seed dropped from the patient ids. Two synthetic folders of other seeds then both had a
    patient ``F-00000`` (generator version 3 added the seed so they are not one patient). By hand: images
    are paired into patients two by two, named modality letter, seed, '-', pair number."""
    csv_path = sy.make_dataset(tmp_path / "ds", 4, 2, sy.SynthConfig(size=64, seed=7), write_masks=False,
                               progress=False)
    assert [r["patient"] for r in _rows(csv_path)] == ["F7-00000", "F7-00000", "F7-00001", "F7-00001", "O7-00000",
                                                        "O7-00000"]


def _masked_synth(root: Path) -> tuple[Path, dict[str, str]]:
    cfg = sy.SynthConfig(size=64, seed=0, p_normal=0.0, fundus_format="png")
    csv_path = sy.make_dataset(root, 3, 0, cfg, write_masks=True, progress=False)
    return csv_path, _rows(csv_path)[0]


def test_a_resumed_dataset_regenerates_a_missing_mask_file(tmp_path: Path) -> None:
    """Mutant: a job counted as done when its image exists, whatever its mask file. An interrupted or
    damaged folder whose image is there but whose mask was lost then stayed without it, while labels.csv
    still names the mask file (the site masks are what evaluations measure predilection maps against)."""
    csv_path, row = _masked_synth(tmp_path / "ds")
    mask = tmp_path / "ds" / row["masks"]
    before = mask.read_bytes()
    mask.unlink()
    sy.make_dataset(tmp_path / "ds", 3, 0, sy.SynthConfig(size=64, seed=0, p_normal=0.0, fundus_format="png"),
                    write_masks=True, progress=False)
    assert mask.read_bytes() == before  # regenerated, byte for byte


def test_a_run_stopped_before_writing_labels_csv_writes_it_on_the_rerun(tmp_path: Path) -> None:
    """Mutant: a folder whose every image exists taken as complete even without labels.csv. A run stopped
    after its last image but before the CSV then returned a path to a file that does not exist, and every
    rerun did the same."""
    csv_path, _ = _masked_synth(tmp_path / "ds")
    content = csv_path.read_text(encoding="utf-8")
    csv_path.unlink()
    again = sy.make_dataset(tmp_path / "ds", 3, 0, sy.SynthConfig(size=64, seed=0, p_normal=0.0, fundus_format="png"),
                            write_masks=True, progress=False)
    assert again == csv_path and csv_path.read_text(encoding="utf-8") == content


def test_a_rerun_with_other_mask_settings_over_a_folder_is_refused(tmp_path: Path) -> None:
    """Mutant: ``write_masks`` left out of the settings a folder is checked against. The docstring: "A folder
    made with other settings is refused rather than mixed"; a rerun asking for site masks over a folder made
    without them (or the reverse) then went ahead, and synth_config.json no longer said whether the folder
    holds masks."""
    cfg = sy.SynthConfig(size=64, seed=0, fundus_format="png")
    sy.make_dataset(tmp_path / "ds", 2, 0, cfg, write_masks=False, progress=False)
    with pytest.raises(ConfigError, match="other settings"):
        sy.make_dataset(tmp_path / "ds", 2, 0, cfg, write_masks=True, progress=False)


def test_the_configured_severity_range_reaches_the_pixels(tmp_path: Path) -> None:
    """Mutant: ``make_dataset`` rendered with the default severity range, ignoring ``SynthConfig.severity``.
    A user asking for subtle cases only (0.15, 0.15) or florid ones only (1, 1) got the same images. Same
    seed, labels and eyes, other severity: a diseased photograph must differ."""
    def first_diseased(sev: tuple[float, float], name: str) -> bytes:
        cfg = sy.SynthConfig(size=64, seed=0, p_normal=0.0, fundus_format="png", severity=sev)
        rows = _rows(sy.make_dataset(tmp_path / name, 1, 0, cfg, write_masks=False, progress=False))
        assert rows[0]["labels"] != "normal"
        return (tmp_path / name / rows[0]["path"]).read_bytes()

    assert first_diseased((0.15, 0.15), "subtle") != first_diseased((1.0, 1.0), "florid")


def test_each_photograph_shows_the_eye_its_row_names(tmp_path: Path) -> None:
    """Mutant: the row's eye not passed to the renderer, which then drew an eye at random: labels.csv said
    "right" for left-eye photographs (the optic disc on the wrong side) about half the time.

    By hand: the disc is the brightest blob, on the nasal side: right of the image centre for a right eye,
    left of it for a left eye (the disc sits 0.58-0.70 field radii from a fovea that is within a few percent
    of the centre)."""
    cfg = sy.SynthConfig(size=128, seed=0, fundus_format="png", p_normal=1.0)  # healthy: nothing brighter
    csv_path = sy.make_dataset(tmp_path / "ds", 8, 0, cfg, write_masks=False, progress=False)
    for row in _rows(csv_path):
        img = cv2.imread(str(tmp_path / "ds" / row["path"]))
        g = cv2.GaussianBlur(img[:, :, 1], (0, 0), 4)
        _, _, _, (bx, _) = cv2.minMaxLoc(g)
        assert (bx > 64) == (row["eye"] == "right"), (row, bx)


# ------------------------------------------------------------------ few-shot subsets


def test_an_image_taken_for_a_rarer_class_counts_for_every_class_it_carries() -> None:
    """Mutant: the count of a class restarted at 0 for each class. The docstring: "an image already taken
    counts for every class it carries". By hand, 1 shot: dr (the rarest, 1 image) takes image 0, which
    carries dme too; dme then has its 1 shot and nothing more is taken: [0]. The mutant took a second
    dme image, so a 1-shot run trained on 2 dme images."""
    s = [D.Sample(Path("/x/0.png"), ("dr", "dme")), D.Sample(Path("/x/1.png"), ("dme",)),
         D.Sample(Path("/x/2.png"), ("dme",))]
    assert D.take_shots(s, 1, seed=0).tolist() == [0]


def test_shots_give_every_class_its_count_whatever_the_seed() -> None:
    """Mutant: images already taken stayed among a class's candidates. Drawing one again counted it a
    second time without adding anything, so a class ended with fewer images than asked although the
    data held enough. By hand, for 2 shots of this set (dr first, 1 image, taken; then dme, which already
    has image 0 and needs 1 of images 1-3): every seed must give dr 1 image (all it has) and dme 2."""
    s = [D.Sample(Path("/x/0.png"), ("dr", "dme"))] + [D.Sample(Path(f"/x/{i}.png"), ("dme",)) for i in (1, 2, 3)]
    for seed in range(20):
        idx = D.take_shots(s, 2, seed=seed)
        counts = Counter(n for i in idx for n in s[i].labels)
        assert counts == {"dr": 1, "dme": 2}, (seed, idx)


# ------------------------------------------------------------------ what a checkpoint records of its data


def test_the_training_record_counts_patients_not_images_without_one(tmp_path: Path) -> None:
    """Mutant: images without a patient id counted as one more patient (``None`` in the set). A bundle's
    record of its training data then claimed a patient that does not exist. By hand: patients p1 (two
    images) and p2, plus two images without an id: 5 images, 2 patients."""
    from uopsl.train.workflow import data_record

    samples = tuple(D.Sample(tmp_path / f"{i}.png", ("normal",), patient=p)
                    for i, p in enumerate(["p1", "p1", "p2", None, None]))
    src = D.DatasetSource("set", tmp_path, samples, D.LabelSpace(("normal",)), "fp", options={"reader": "csv"})
    rec = data_record("finetune", src, "fundus")
    assert (rec["n_images"], rec["n_patients"]) == (5, 2)


def test_images_seen_leave_out_files_that_could_not_be_read(tmp_path: Path) -> None:
    """Mutant: the 0 digest of an unreadable file recorded like a photograph. images_seen.json then listed
    ``0000000000000000`` as a training photograph, and the per-role count said one more image made the
    checkpoint than did. By hand: digests 0 (unreadable), 5 and 5 again: one photograph, ``...0005``."""
    import json

    from uopsl.train.workflow import SEEN_FILE, record_images_seen

    counts = record_images_seen(tmp_path, {"train": np.array([0, 5, 5], np.uint64), "earlier": None})
    assert counts == {"train": 1, "earlier": None}
    roles = json.loads((tmp_path / SEEN_FILE).read_text(encoding="utf-8"))["roles"]
    assert roles == {"train": ["0000000000000005"], "earlier": None}


# ------------------------------------------------------------------ run identities (reuse and resume)


@pytest.fixture(scope="module")
def tiny():  # type: ignore[no-untyped-def]
    """One small random model (its weights are part of every identity below; built once, it takes seconds)."""
    from trainhelpers import tiny_model

    return tiny_model(random_text=True)


def _identity(tiny, cfg_kw: dict[str, object], items, val=None):  # type: ignore[no-untyped-def]
    from uopsl.train.loops import TrainConfig
    from uopsl.train.workflow import run_identity

    return run_identity("finetune", TrainConfig(**cfg_kw), tiny[0], items, val)  # type: ignore[arg-type]


def _items(tmp_path: Path, n: int = 4) -> list:  # type: ignore[type-arg]
    from uopsl.train.torchdata import Item

    out = []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        p.write_bytes(b"x" * (10 + i))
        out.append(Item(p, np.array([1.0, 0.0, 0.0], np.float32) if i % 2 else np.array([0, 1.0, 0], np.float32)))
    return out


def test_how_a_run_is_carried_out_is_not_part_of_its_identity(  # type: ignore[no-untyped-def]
        tiny, tmp_path: Path) -> None:
    """Mutant: device, AMP and the checkpoint interval hashed with the settings. A finished run rerun on
    another device (a GPU box after a CPU test) was then refused as "another settings" instead of reused,
    and an interrupted one could not be completed elsewhere. What it trains (here the epochs) still counts."""
    items = _items(tmp_path)
    base = _identity(tiny, {"epochs": 1, "device": "cpu", "amp": False, "save_every": 5}, items)
    assert _identity(tiny, {"epochs": 1, "device": "cuda", "amp": True, "save_every": 50}, items) == base
    assert _identity(tiny, {"epochs": 2, "device": "cpu", "amp": False, "save_every": 5}, items)["settings"] != \
        base["settings"]


def test_relabelled_images_are_another_run(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Mutant: the targets left out of the data digest. The same files with corrected labels then counted
    as the same data: the folder's finished model, trained on the old labels, was reused without a word."""
    items = _items(tmp_path)
    from uopsl.train.torchdata import Item

    relabelled = [Item(it.path, it.target[::-1].copy()) for it in items]
    assert _identity(tiny, {"epochs": 1}, items)["data"] != _identity(tiny, {"epochs": 1}, relabelled)["data"]


def test_moving_an_image_from_training_to_validation_is_another_run(  # type: ignore[no-untyped-def]
        tiny, tmp_path: Path) -> None:
    """Mutant: no separator between the lists hashed. Training on images 0-2 and validating on 3 then had
    the identity of training on 0-1 and validating on 2-3: another run (another epoch kept, other
    thresholds) reused as this one."""
    items = _items(tmp_path)
    three_one = _identity(tiny, {"epochs": 1}, items[:3], items[3:])["data"]
    assert three_one != _identity(tiny, {"epochs": 1}, items[:2], items[2:])["data"]


def test_an_interrupted_run_whose_checkpoint_json_is_damaged_is_left_to_its_resume(tmp_path: Path) -> None:
    """Mutant: a damaged checkpoint.json refused whatever else the folder holds. With a training state there
    (state.json and state.safetensors: an interrupted run) the resume rewrites checkpoint.json, so the
    rerun must go on (False: nothing finished to reuse), not send the user to restore the file or start
    over in a new folder."""
    import json

    from uopsl.train.workflow import finished_run

    out = tmp_path / "ft"
    out.mkdir()
    (out / "state.json").write_text(json.dumps({"stage": "finetune"}), encoding="utf-8")
    (out / "state.safetensors").write_bytes(b"tensors")
    (out / "checkpoint.json").write_text('{"stage": "fine', encoding="utf-8")  # torn
    assert finished_run(out, "finetune", {"stage": "finetune", "model": "m", "settings": "s", "data": "d"}) is False


def test_a_pretraining_completed_after_a_stop_counts_as_finished(tmp_path: Path) -> None:
    """Mutant: completing a run removed its run key but kept the "unfinished" mark. A pre-training stopped
    between saving its model and recording its identity, then completed by the rerun, stayed unfinished for
    good: export and evaluate refused it and every rerun trained it again. By hand: after the rerun the mark
    is gone, the checkpoint is usable and the same command finds it finished."""
    from dataclasses import replace

    from trainhelpers import tiny_items, tiny_model
    from uopsl.train.checkpoint import UNFINISHED_KEY, UNFINISHED_RUN_KEY, read_meta, save_model
    from uopsl.train.loops import TrainConfig
    from uopsl.train.workflow import finished_run, refuse_unfinished, resume_key, run_identity, run_pretrain

    items = tiny_items(tmp_path / "imgs", n=3)
    model, meta = tiny_model(random_text=True)
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", amp=False, augment=False)
    want = run_identity("pretrain", cfg, model, items, None)
    out = tmp_path / "pre"
    # What pretrain() leaves when the process stops before the workflow records the identity.
    save_model(out, model, replace(meta, stage="pretrain", metrics={"history": [], UNFINISHED_KEY: True,
                                                                    UNFINISHED_RUN_KEY: resume_key(want)}))
    run_pretrain(model, meta, items, None, cfg, out, identity=want)
    done = read_meta(out)
    assert UNFINISHED_KEY not in done.metrics and UNFINISHED_RUN_KEY not in done.metrics
    refuse_unfinished(out, done)  # usable: no ConfigError
    assert finished_run(out, "pretrain", want) is True


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A one-epoch fine-tune of the tiny model (frozen encoder: only the head trains) on 12 photographs, 6 more
    validating (2 of each class); its checkpoint metadata carries no referable flags, as one written before
    they were recorded."""
    from trainhelpers import tiny_items, tiny_model
    from uopsl.train.loops import TrainConfig
    from uopsl.train.workflow import run_finetune

    root = tmp_path_factory.mktemp("ft")
    items = tiny_items(root / "imgs", n=18)
    model, meta = tiny_model(random_text=True)
    assert meta.referable == ()
    cfg = TrainConfig(epochs=1, batch_size=4, seed=3, device="cpu", amp=False, augment=False, freeze_encoder=True)
    _, meta = run_finetune(model, meta, items[:12], items[12:], cfg, root / "ft", target_sensitivity=0.9)
    return root / "ft", meta


def test_without_referable_flags_a_disease_class_gets_its_threshold_at_the_target_sensitivity(
        finetuned) -> None:  # type: ignore[no-untyped-def]
    """Mutant: a checkpoint without referable flags fine-tuned as if no class referred. Every threshold was
    then chosen by Youden's J, and a disease class (here "a", referable by default) missed the sensitivity
    the user asked for. By hand: the record of a class chosen for referral carries the target, 0.9."""
    records = {r["name"]: r for r in finetuned[1].metrics["operating_points"]}
    assert records["a"]["target_sensitivity"] == 0.9
    assert records["b"]["target_sensitivity"] == 0.9


def test_without_referable_flags_the_thresholds_follow_the_flags_the_bundle_will_have(
        finetuned) -> None:  # type: ignore[no-untyped-def]
    """The export marks a class referable by :func:`descriptions.referable_by_default` when the checkpoint has
    no flags ("normal" does not refer); the thresholds chosen at fine-tuning follow the same flags, so "normal"
    gets a Youden threshold (no target sensitivity), not one chosen as for a referable class. A defect until
    session 37's reread (finetune fell back to every class referable); this test was a strict xfail then."""
    records = {r["name"]: r for r in finetuned[1].metrics["operating_points"]}
    assert records["normal"]["target_sensitivity"] is None


def test_evaluate_pairs_each_readable_photograph_with_its_own_mask(tmp_path: Path) -> None:
    """Mutant: the masks of the readable photographs taken as the first ones in the list, not those at their
    indices. With an unreadable photograph early in the list, every later photograph's predilection map was
    scored against its neighbour's site mask (or none). By hand: photographs 0-5 are normal, a, b, normal,
    a, b; photograph 1 cannot be read; only 4 (a) and 5 (b) have masks, so each class is measured on
    exactly one photograph."""
    from dataclasses import replace

    from trainhelpers import tiny_items, tiny_model
    from uopsl.train.checkpoint import save_model
    from uopsl.train.workflow import run_evaluate

    items = tiny_items(tmp_path / "imgs", n=6)
    items[1].path.write_bytes(b"not an image")
    masks: list[Path | None] = [None] * 4
    for i in (4, 5):
        m = np.zeros((96, 96), np.uint8)
        m[:48] = 1
        np.savez(tmp_path / f"m{i}.npz", a=m, b=m)
        masks.append(tmp_path / f"m{i}.npz")
    model, meta = tiny_model(random_text=True)
    save_model(tmp_path / "ck", model, replace(meta, stage="finetune"))
    conc = run_evaluate(tmp_path / "ck", items, None, n_boot=0, masks=masks, device="cpu",
                        keep_ungradable=True)["site_concentration"]
    assert conc["a"]["n_images"] == 1 and conc["b"]["n_images"] == 1


# ------------------------------------------------------------------ training images (torchdata)


def _photos(folder: Path, n: int, suffix: str = ".png", seed: int = 1) -> list[Path]:
    from tinymodel import random_fundus_batch

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(random_fundus_batch(n, 96, seed=seed)):
        p = folder / f"{i}{suffix}"
        cv2.imwrite(str(p), im[:, :, ::-1])
        paths.append(p)
    return paths


def test_other_preprocessing_of_the_same_size_is_not_served_from_the_cache(tmp_path: Path) -> None:
    """Mutant: the cache keyed by the input size alone, not every preprocessing parameter. A run with CLAHE
    on, sharing a cache folder with an earlier run without it, then trained on the earlier run's pixels."""
    from uopsl.runtime.preprocess import PreprocessConfig
    from uopsl.train.torchdata import cache_images

    paths = _photos(tmp_path / "img", 2)
    plain, _, _ = cache_images(paths, PreprocessConfig(size=64, clahe=False), tmp_path / "cache")
    with_clahe, _, _ = cache_images(paths, PreprocessConfig(size=64, clahe=True), tmp_path / "cache")
    assert not np.array_equal(np.asarray(plain), np.asarray(with_clahe))


def _with_a_bad_first_image(tmp_path: Path):  # type: ignore[no-untyped-def]
    from uopsl.runtime.preprocess import PreprocessConfig
    from uopsl.train.torchdata import ImageDataset, Item

    bad = tmp_path / "img" / "bad.png"
    good = _photos(tmp_path / "img", 2)
    bad.write_bytes(b"not a png")
    targets = [np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32), np.array([1.0, 1.0], np.float32)]
    items = [Item(p, t) for p, t in zip([bad, *good], targets)]
    return ImageDataset(items, PreprocessConfig(size=64)), good


def test_digests_stay_with_their_photographs_when_one_cannot_be_read(tmp_path: Path) -> None:
    """Mutant: the digests of the kept images taken as the first ones, not those at the kept indices. With an
    unreadable first file the digests were shifted by one (a 0, then the first readable photograph's), so
    images_seen.json left out the last photographs that made the checkpoint and evaluate's "these
    photographs made the checkpoint" warning missed them. By hand: each kept image's digest
    is the first 8 bytes of its file's sha256, big-endian."""
    import hashlib

    ds, good = _with_a_bad_first_image(tmp_path)
    want = [int.from_bytes(hashlib.sha256(p.read_bytes()).digest()[:8], "big") for p in good]
    assert [int(d) for d in ds.digests] == want


def test_pixels_stay_with_their_targets_when_one_image_cannot_be_read(tmp_path: Path) -> None:
    """Mutant: ``__getitem__`` read the pixels at position i, not at the i-th kept index. With an unreadable
    first file, every later image was trained with its neighbour's label (and the first kept one was the
    blank slot of the unreadable file). By hand: item 0 of the dataset is the first readable photograph
    (a disc on black, so not blank) with its own target (0, 1)."""
    ds, _ = _with_a_bad_first_image(tmp_path)
    assert len(ds) == 2
    x, y = ds[0]
    assert float(x.sum()) > 0
    assert y.tolist() == [0.0, 1.0]
    assert float(ds[1][0].sum()) > 0


def test_augmentation_flips_about_half_the_images() -> None:
    """Mutant: the flip never taken. The docstring promises horizontal flips (left and right eyes are mirror
    images); without them a model learns the disc's side. By hand: a left-dark, right-bright image keeps its
    bright half on the right unless flipped; over 40 seeds each orientation must appear (p = 1/2 each)."""
    import torch

    from uopsl.train.torchdata import augment

    x = torch.zeros(3, 8, 8)
    x[:, :, 4:] = 200.0
    flipped = 0
    for seed in range(40):
        out = augment(x.clone(), torch.Generator().manual_seed(seed))
        flipped += int(float(out[:, :, :4].mean()) > float(out[:, :, 4:].mean()))
    assert 5 < flipped < 35


# ------------------------------------------------------------------ the stages


def test_a_frozen_encoder_with_augmentation_trains_on_images_not_cached_features() -> None:
    """Mutant: features cached whenever the encoder is frozen, augmentation or not. Cached features are
    computed once from unaugmented images, so ``--freeze-encoder`` without ``--no-augment`` silently
    trained without augmentation. By the docstring: only a frozen encoder *and* no augmentation cache."""
    import torch

    from uopsl.train.loops import TrainConfig
    from uopsl.train.stages import as_features

    class Images:  # never encoded: the images themselves are what trains
        pass

    ds = Images()
    cfg = TrainConfig(freeze_encoder=True, augment=True)
    assert as_features(ds, torch.nn.Identity(), cfg, torch.device("cpu")) is ds  # type: ignore[arg-type]


def test_the_feature_cache_is_computed_again_for_a_photograph_replaced_in_place(tmp_path: Path) -> None:
    """Mutant: the feature cache's fingerprint kept each file's path but not its size and modification time.
    A photograph replaced under the same name (a corrected image, a re-export) was then trained on with the
    old photograph's features. By hand: the replaced image's features change, the other's stay."""
    import os

    import torch

    from uopsl.runtime.preprocess import PreprocessConfig
    from uopsl.train.stages import FeatureDataset
    from uopsl.train.torchdata import ImageDataset, Item

    photos, other = _photos(tmp_path / "a", 2, seed=1), _photos(tmp_path / "b", 1, seed=2)[0]
    items = [Item(p, np.zeros(1, np.float32)) for p in photos]
    torch.manual_seed(0)
    encoder = torch.nn.Conv2d(3, 2, 8, stride=8)  # any fixed encoder: what matters is which pixels it sees
    pre, cpu, cache = PreprocessConfig(size=64), torch.device("cpu"), tmp_path / "features.safetensors"
    first = FeatureDataset.cached(cache, encoder, ImageDataset(items, pre), cpu).features.clone()
    mtime = photos[0].stat().st_mtime_ns
    photos[0].write_bytes(other.read_bytes())
    os.utime(photos[0], ns=(mtime + 10**9, mtime + 10**9))
    again = FeatureDataset.cached(cache, encoder, ImageDataset(items, pre), cpu).features
    assert not torch.equal(first[0], again[0])
    assert torch.equal(first[1], again[1])


def _feature_sets(model, n_train: int = 8):  # type: ignore[no-untyped-def]
    """Random backbone features for ``model`` (a head-only fine-tune, as with a frozen encoder): a training set
    and a validation set of 4."""
    from trainhelpers import feature_batch
    from uopsl.train.stages import FeatureDataset

    feats, y = feature_batch(model, n=n_train, grid=4)
    return FeatureDataset(feats.half(), y.numpy()), FeatureDataset(feats[:4].half(), y[:4].numpy())


_HEAD_ONLY = dict(batch_size=4, seed=0, device="cpu", amp=False, augment=False, freeze_encoder=True)


def test_finetune_ends_on_the_weights_of_its_best_epoch(tmp_path: Path) -> None:
    """Mutant: the best epoch's weights never loaded back. The checkpoint then held the last epoch's model
    while its metrics named epoch 1 as the one kept (and its thresholds were chosen on the last epoch's
    scores). By hand: the validation score says epoch 1 is best (1.0, then 0.0), so the weights returned
    are the ones the model had when epoch 1 was scored."""
    import torch

    from trainhelpers import tiny_model
    from uopsl.train.loops import TrainConfig
    from uopsl.train.stages import finetune

    model, meta = tiny_model(random_text=True)
    train, val = _feature_sets(model)
    scores, at_best = [1.0, 0.0], {}

    def select(probs: np.ndarray, targets: np.ndarray) -> float:
        score = scores.pop(0)
        if score == 1.0:
            at_best.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return score

    cfg = TrainConfig(epochs=2, save_every=0, **_HEAD_ONLY)  # type: ignore[arg-type]
    trained, result = finetune(model, train, val, cfg, tmp_path / "ft", meta, select=select)
    assert result["best_epoch"] == 1 and not scores
    state = trained.state_dict()
    assert state.keys() == at_best.keys()
    assert all(torch.equal(state[k], at_best[k]) for k in state)


def test_without_validation_images_the_epoch_of_lowest_training_loss_is_kept(tmp_path: Path) -> None:
    """Mutant: the training loss not negated when there is no validation set. "Higher is better" then kept
    the epoch of the *highest* loss. By hand: the kept epoch is the one whose mean training loss in the
    history is lowest, and its score is minus that loss."""
    from trainhelpers import tiny_model
    from uopsl.train.loops import TrainConfig
    from uopsl.train.stages import finetune

    model, meta = tiny_model(random_text=True)
    train, _ = _feature_sets(model)
    cfg = TrainConfig(epochs=3, save_every=0, lr=0.05, **_HEAD_ONLY)  # type: ignore[arg-type]
    _, result = finetune(model, train, None, cfg, tmp_path / "ft", meta)
    losses = [h["loss"] for h in result["history"]]
    assert len(set(losses)) == 3  # the epochs differ, so the choice means something
    assert result["best_epoch"] == 1 + int(np.argmin(losses))
    assert result["best_val_score"] == pytest.approx(-min(losses))


def test_a_resumed_finetune_remembers_its_best_score(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant: the best score so far started again at minus infinity on resume. The first epoch after a
    restart then always replaced the best one, however bad: an interrupted run kept another epoch than the
    same run uninterrupted. By hand: epoch 1 scores 1.0; the run stops in epoch 2, resumes, and epoch 2
    scores 0.0: epoch 1 stays the kept one, with score 1.0."""
    from trainhelpers import tiny_model
    from uopsl.train.loops import StageRunner, TrainConfig
    from uopsl.train.stages import finetune

    cfg = TrainConfig(epochs=2, save_every=1, **_HEAD_ONLY)  # type: ignore[arg-type]
    real_step, calls = StageRunner.step, {"n": 0}

    def step(self: StageRunner, loss):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:  # the first step of epoch 2 (8 images, 4 a batch: 2 steps an epoch)
            raise KeyboardInterrupt("simulated stop")
        real_step(self, loss)

    model, meta = tiny_model(random_text=True)
    train, val = _feature_sets(model)
    monkeypatch.setattr(StageRunner, "step", step)
    with pytest.raises(KeyboardInterrupt):
        finetune(model, train, val, cfg, tmp_path / "ft", meta, select=lambda p, t: 1.0)
    monkeypatch.undo()
    assert (tmp_path / "ft" / "state.json").is_file()
    model, meta = tiny_model(random_text=True)
    _, result = finetune(model, train, val, cfg, tmp_path / "ft", meta, select=lambda p, t: 0.0)
    assert (result["best_epoch"], result["best_val_score"]) == (1, 1.0)


def test_pretraining_the_full_variant_without_an_oct_pool_is_refused(tmp_path: Path) -> None:
    """Mutant: the check dropped. The full UOPSL variant then went on without the OCT pool its method needs
    instead of stopping, with a clear error, before anything is written."""
    from trainhelpers import tiny_model
    from uopsl.runtime.errors import DataError
    from uopsl.train.loops import TrainConfig
    from uopsl.train.stages import pretrain

    model, meta = tiny_model(random_text=True)
    assert model.config.uses_oct
    with pytest.raises(DataError, match="needs an OCT pool"):
        pretrain(model, object(), None, TrainConfig(device="cpu", epochs=1),  # type: ignore[arg-type]
                 tmp_path / "out", meta)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_the_site_guide_is_off_for_a_model_without_site_attention() -> None:
    """Mutant: only ``--freeze-sites`` turned the site guide off. For a ``fundus_only`` model (no site
    attention to guide) the configuration the run records (checkpoint, run identity) then said
    ``w_site_guide = 1``: not what ran."""
    from trainhelpers import tiny_model
    from uopsl.train.loops import TrainConfig
    from uopsl.train.stages import effective_finetune_config

    model, _ = tiny_model("fundus_only", random_text=True)
    assert effective_finetune_config(TrainConfig(w_site_guide=1.0), model).w_site_guide == 0.0


# ------------------------------------------------------------------ finetune --shots


def test_finetune_draws_its_shots_with_the_runs_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant: ``--shots`` drawn with the default seed 0 whatever ``--seed`` says. The few-shot experiments
    repeat a run over seeds "of the shot draw and head initialisation" (docs/results.md): every seed then
    trained on the same N images per class, and the spread across seeds understated how much the choice
    of images matters. The draw is stopped here, before any model is built."""
    from trainhelpers import tiny_synth
    from uopsl.train.commands.finetune import command

    synth = tiny_synth(tmp_path / "synth", 8)
    asked: dict[str, object] = {}

    class Drawn(Exception):
        pass

    def spy(samples, n_per_class, seed=0, classes=None):  # type: ignore[no-untyped-def]
        asked.update(n=n_per_class, seed=seed)
        raise Drawn

    monkeypatch.setattr(D, "take_shots", spy)
    with pytest.raises(Drawn):
        command.main(["--data", f"synthetic:{synth}", "--out", str(tmp_path / "out"), "--shots", "2", "--seed", "5",
                      "--device", "cpu"], standalone_mode=False)
    assert asked == {"n": 2, "seed": 5}
