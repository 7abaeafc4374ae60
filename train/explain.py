"""Per-class predilection maps over fundus photographs (``uopsl explain``).

Inputs are files, folders (walked recursively for images, as ``uopsl-screen``
does) and list files. Each photograph gets ``OUT/<stem>_sites.png``; where two
inputs share a file name (``IMG_0001.jpg`` of two visits), or the name is
already taken in ``OUT`` by another photograph, the map is named
``<stem>-<hash>_sites.png`` instead, with the same short hash of the resolved
path that ``uopsl-screen`` uses for its overlays, so no map overwrites another.
``OUT/maps.csv`` says which photograph each PNG shows. A photograph that cannot
be read or preprocessed is logged and skipped; the others are still drawn.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from uopsl.runtime.errors import ConfigError, ImageError

log = logging.getLogger(__name__)

#: The provenance table in the output folder: one row per PNG, the photograph it shows.
INDEX = "maps.csv"


@dataclass
class ExplainResult:
    """What :func:`explain_inputs` did: ``written`` (photograph, PNG) pairs, ``failed`` (photograph, reason), and
    ``ungradable`` (photograph, the quality gate's reasons): drawn, marked on the PNG, that ``uopsl-screen``
    would not screen."""

    written: list[tuple[str, Path]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    ungradable: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)


def _read_index(out: Path) -> dict[str, tuple[str, str]]:
    """PNG name -> (resolved photograph path, the classes it shows, ";"-joined), from an earlier run's
    ``maps.csv`` (empty if none or unreadable; classes "" in one written before they were recorded)."""
    try:
        text = (out / INDEX).read_text(encoding="utf-8")
    except OSError:
        return {}
    rows = csv.DictReader(io.StringIO(text))
    return {r["png"]: (r["source"], r.get("classes") or "") for r in rows if r.get("png") and r.get("source")}


def _write_index(out: Path, index: dict[str, tuple[str, str]]) -> None:
    """``maps.csv``: which photograph each PNG shows and its panels' classes, left to right (a review: a rerun with
    other --classes replaced a PNG, and nothing but the panels' captions said which classes it held)."""
    from uopsl.runtime.fsio import write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["png", "source", "classes"])
    for png in sorted(index):
        w.writerow([png, *index[png]])
    write_text(out / INDEX, buf.getvalue())


def output_names(sources: Sequence[tuple[Path, str]], taken: dict[str, str]) -> list[str]:
    """A PNG name per ``(path, id)`` input, none shared and none overwriting another photograph's map.

    ``id`` is the input's ``uopsl-screen`` id (``<safe stem>-<hash of the resolved path>``); ``taken``
    maps names already in the output folder to the resolved photograph they show.
    """
    stems = Counter(p.stem for p, _ in sources)
    drawn = {source: png for png, source in taken.items()}  # a photograph drawn before keeps its map's name
    names = []
    for path, ident in sources:
        plain = f"{path.stem}_sites.png"
        owner = taken.get(plain)
        if os.path.realpath(path) in drawn:
            names.append(drawn[os.path.realpath(path)])
        elif stems[path.stem] == 1 and owner in (None, os.path.realpath(path)):
            names.append(plain)
        else:
            names.append(f"{ident}_sites.png")
    return names


def bundle_heatmap_code(cls: str) -> str:
    """Python that draws class ``cls``'s map from a bundle, as the refusals of ``uopsl explain`` advise it.

    Why: they advised ``Screener(bundle).screen(photo).heatmap(...)``, which raises "the Screener is not open"
    (a review); a Screener is opened by ``with``. ``bundle`` and ``photo`` are the reader's paths.
    """
    return (f"`from uopsl.runtime.api import Screener` then "
            f"`with Screener(bundle) as s: heat = s.screen(photo).heatmap({cls!r})`")


def explain_inputs(ckpt: Path, inputs: Sequence[str | os.PathLike[str]], out: Path,
                   classes: Sequence[str] | None = None, width: int = 384) -> ExplainResult:
    """Per-class site-attention heatmaps over each photograph: one PNG per photograph, a panel per class.

    Drawn by :func:`uopsl.runtime.overlay.render_overlay`, in the same colours as ``uopsl-screen``'s overlays.

    Raises :class:`ConfigError` for a bundle (maps are drawn from a checkpoint), an unknown class, a class
    named twice (under any spelling), a missing input or when
    no photograph is found; a photograph that cannot be read is recorded in
    ``failed`` (and logged) and the batch goes on.
    """
    from uopsl.runtime.fsio import write_text
    from uopsl.runtime.inputs import (MAPS_MARKER, WalkState, check_inputs, check_output_placement, display_path,
                                      iter_inputs)
    from uopsl.runtime.model_folders import check_output_outside_model_folders, folder_kind
    from uopsl.train import descriptions
    from uopsl.train.checkpoint import load_model, read_meta

    check_output_outside_model_folders(out)
    if folder_kind(ckpt) == "bundle":
        raise ConfigError(f"{ckpt} is a deployment bundle (manifest.json): explain draws the maps of a training "
                          "checkpoint, so give the checkpoint folder it was exported from (checkpoint.json and "
                          "model.safetensors). To draw a bundle's own map (a class added by export --classes too), "
                          f"in Python: {bundle_heatmap_code((classes or ['CLASS'])[0])}")
    meta = read_meta(ckpt)
    if meta.model.variant == "fundus_only":
        raise ConfigError(f"{ckpt} is a fundus_only model: it has no site attention to draw (its maps would be "
                          "uniform); explain a uopsl or p_only checkpoint")
    trained = {descriptions.canonical(c): c for c in meta.model.classes}
    # a class under another spelling or alias (DR, diabetic retinopathy) is the trained class
    given = list(classes or meta.model.classes)
    names = [trained.get(descriptions.canonical(c), c) for c in given]
    unknown = [c for c in names if c not in meta.model.classes]
    if unknown:
        raise ConfigError(
            f"{', '.join(repr(c) for c in unknown)} {'is not a class' if len(unknown) == 1 else 'are not classes'} "
            f"of {ckpt} (its classes: {', '.join(meta.model.classes)}); explain draws the classes a checkpoint was "
            "trained on. For a class given by its description: export a bundle with `uopsl export --classes FILE` "
            f"and draw its map from that bundle in Python: {bundle_heatmap_code(unknown[0])}")
    twice = sorted({n for n in names if names.count(n) > 1}) if classes else []
    if twice:  # the same panel drawn twice, without a word (a review: --classes DR,dme,dr)
        raise ConfigError(f"--classes names {', '.join(repr(n) for n in twice)} more than once (under other "
                          f"spellings: {', '.join(repr(g) for g, n in zip(given, names) if n in twice)}); give each "
                          "class once")
    check_inputs(inputs)
    check_output_placement(out, inputs)
    state = WalkState(exclude=(out,))
    items = [it for it in iter_inputs(inputs, state=state) if it.path is not None]
    if state.skipped_message():
        log.info("%s", state.skipped_message())
    if not items:
        raise ConfigError(f"no photographs found in {', '.join(display_path(p) for p in inputs)}")
    seen: set[str] = set()
    unique = []
    for it in items:  # the same file named twice (or through a link) is drawn once
        real = os.path.realpath(it.path)  # type: ignore[arg-type]
        if real not in seen:
            seen.add(real)
            unique.append(it)
    index = _read_index(out)
    dests = output_names([(Path(it.path), it.id) for it in unique],  # type: ignore[arg-type]
                         {png: source for png, (source, _) in index.items()})
    if any(d != f"{Path(it.path).stem}_sites.png" for it, d in zip(unique, dests)):  # type: ignore[arg-type]
        log.info("photographs share a file name (or an earlier map has it): their maps are named "
                 "<name>-<hash of the path>_sites.png; %s/%s lists which photograph each map shows", out, INDEX)

    model, meta = load_model(ckpt)
    model.eval()
    # Before the first map: a folder walk over the photographs around it leaves this folder out.
    write_text(Path(out) / MAPS_MARKER, "uopsl explain maps: heatmaps drawn over photographs, not photographs\n")
    result = ExplainResult()
    try:
        _draw_all(unique, dests, model, meta, names, out, index, result, width)
    except KeyboardInterrupt:
        if result.written:
            _write_index(out, index)
        raise KeyboardInterrupt(f"interrupted: {len(result.written)} of {len(unique)} maps written to {out}"
                                + (f" (listed in {INDEX})" if result.written else "")
                                + "; the same command draws them all again") from None
    if result.written:
        _write_index(out, index)
    if result.ungradable:
        log.warning("%d of %d photographs fail the quality gate that uopsl-screen applies (it would call them "
                    "ungradable and give no findings); their maps are drawn and marked UNGRADABLE: %s",
                    len(result.ungradable), len(unique),
                    "; ".join(f"{display_path(s)} ({', '.join(r)})" for s, r in result.ungradable[:5])
                    + (" ..." if len(result.ungradable) > 5 else ""))
    if result.failed:
        log.warning("%d of %d photographs could not be read and have no map: %s", len(result.failed), len(unique),
                    "; ".join(display_path(s) for s, _ in result.failed[:5])
                    + (" ..." if len(result.failed) > 5 else ""))
    return result


def _draw_all(unique: Sequence[Any], dests: Sequence[str], model: Any, meta: Any, names: Sequence[str], out: Path,
              index: dict[str, tuple[str, str]], result: ExplainResult, width: int) -> None:
    """Draw each photograph's panel into ``out``, recording it in ``index`` and ``result`` as it is written."""
    import cv2
    import torch

    from uopsl.runtime import quality
    from uopsl.runtime.fsio import write_bytes
    from uopsl.runtime.overlay import PEAK_COLOUR, encode_png, render_overlay
    from uopsl.runtime.pipeline import scale_geometry
    from uopsl.runtime.inputs import display_path
    from uopsl.runtime.preprocess import preprocess_file

    for it, name in zip(unique, dests):
        path = Path(it.path)  # type: ignore[arg-type]
        try:
            pre = preprocess_file(path, replace(meta.preprocess), keep_original=True)
        except (ImageError, OSError) as exc:
            log.warning("no map for %s", exc if str(path) in str(exc) else f"{display_path(path)}: {exc}")
            result.failed.append((str(path), str(exc)))
            continue
        orig = pre.original
        assert orig is not None  # keep_original=True
        # The gate uopsl-screen applies (a review: an OCT B-scan was drawn with "dr p=0.65" and nothing said the
        # screener calls it ungradable). Drawn all the same: a map of a poor photograph can still show why.
        verdict = quality.assess(pre)
        if not verdict.gradable:
            result.ungradable.append((str(path), verdict.reasons))
        x = torch.from_numpy(pre.image).permute(2, 0, 1)[None].float()
        with torch.no_grad():
            o = model(x)
        probs = model.probs(o["logits"])[0].numpy()
        scale = width / orig.shape[1]
        small = cv2.resize(orig, (width, max(1, round(orig.shape[0] * scale))), interpolation=cv2.INTER_AREA)
        panels = []
        # The maps go straight onto the panel's grid: at the photograph's own size first, an 8000x6000 one took a
        # 192 MB array per class before being shrunk to the panel (a review).
        on_panel = scale_geometry(pre.geometry, small.shape[:2])
        for c in names:
            k = model.config.classes.index(c)
            heat = on_panel.to_original(o["site_maps"][0, k].numpy())
            panel = render_overlay(small, heat)
            cv2.putText(panel, f"{c} p={probs[k]:.2f}", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2,
                        cv2.LINE_AA)
            # Each map is scaled to its own peak (render_overlay): a class at p=0.00 shows a hot spot as bright as
            # one at p=0.9. Said on every panel, where a reader of the picture alone would otherwise compare colours.
            # The colour is the one map the toolkit draws heatmaps in (runtime/overlay.py), so it is named from there.
            cv2.putText(panel, f"{PEAK_COLOUR}: this map's own peak", (8, panel.shape[0] - 10),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            if not verdict.gradable:
                cv2.putText(panel, "UNGRADABLE: " + ", ".join(verdict.reasons), (8, 48), cv2.FONT_HERSHEY_SIMPLEX,
                            0.5, (255, 80, 80), 2, cv2.LINE_AA)
            panels.append(panel)
        dest = out / name
        write_bytes(dest, encode_png(np.concatenate(panels, axis=1)))
        index[name] = (os.path.realpath(path), ";".join(names))
        # Said at INFO where the name alone does not tell (a hash was added); the rest with -v; all in maps.csv.
        log.log(logging.DEBUG if name == f"{path.stem}_sites.png" else logging.INFO, "%s <- %s", dest,
                display_path(path))
        result.written.append((str(path), dest))
