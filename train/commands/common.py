"""Pieces shared by the ``uopsl`` training commands: dataset specs, option groups, config echo.

A dataset is named on the command line as ``KIND:PATH[:key=value,...]``:

* ``synthetic:DIR`` (the ``uopsl synth`` output), ``tvhl:DIR``, ``folder:DIR``,
  ``aptos:DIR``, ``odir:DIR``, ``rfmid:DIR``, ``idrid:DIR``, ``messidor2:DIR``,
  ``oct2017:DIR``, ``octdl:DIR`` (reader options as ``key=value``, e.g.
  ``tvhl:../shared/data/tvhl:task=four_class,modality=oct``);
* a bare folder holding ``labels.csv`` is read as synthetic, any other bare
  folder as folder-per-class;
* ``split=train|val|test`` takes that part of a patient-level 70/15/15 split
  (``split_seed=N``, default 0); ``fold=I/K`` takes the I-th held-out fold of
  a patient-grouped K-fold and ``notfold=I/K`` everything else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from uopsl.runtime.errors import ConfigError
from uopsl.train import data

if TYPE_CHECKING:
    from uopsl.train.torchdata import Item

log = logging.getLogger(__name__)

_SPLIT_KEYS = ("split", "split_seed", "fold", "notfold", "fold_seed")


def _value(v: str) -> Any:
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    try:
        return int(v)
    except ValueError:
        return v


def parse_spec(spec: str) -> tuple[str, Path, dict[str, Any]]:
    """``KIND:PATH[:k=v,...]`` -> (kind, path, options)."""
    kind, rest = (spec.split(":", 1) if ":" in spec and spec.split(":", 1)[0] in data.READERS else ("", spec))
    opts: dict[str, Any] = {}
    if ":" in rest and "=" in rest.rsplit(":", 1)[1]:
        rest, tail = rest.rsplit(":", 1)
        for kv in tail.split(","):
            if "=" not in kv:
                raise ConfigError(f"dataset option {kv!r} in {spec!r} is not key=value")
            k, v = kv.split("=", 1)
            opts[k.strip()] = _value(v.strip())
    path = Path(rest)
    if not kind:
        if (path / "labels.csv").is_file():
            kind = "synthetic"
        elif path.is_dir():
            kind = "folder"
        else:
            raise ConfigError(
                f"cannot tell the dataset kind of {spec!r}; write KIND:PATH with KIND one of {sorted(data.READERS)}"
            )
    return kind, path, opts


def load_source(spec: str) -> data.DatasetSource:
    """Read a dataset spec, applying its split/fold selection."""
    kind, path, opts = parse_spec(spec)
    sel = {k: opts.pop(k) for k in _SPLIT_KEYS if k in opts}
    src = data.load_dataset(kind, path, **opts)
    if "split" in sel:
        parts = data.patient_split(src.samples, seed=int(sel.get("split_seed", 0)))
        name = sel["split"]
        if name not in ("train", "val", "test"):
            raise ConfigError(f"split must be train, val or test, got {name!r}")
        src = src.subset(getattr(parts, name), f"{src.name}[{name}]")
    for key in ("fold", "notfold"):
        if key in sel:
            try:
                i, k = (int(x) for x in str(sel[key]).split("/"))
            except ValueError:
                raise ConfigError(f"{key} must look like I/K (e.g. 1/3), got {sel[key]!r}") from None
            if not 1 <= i <= k:
                raise ConfigError(f"{key}={sel[key]}: I must be in 1..K")
            train_idx, test_idx = data.group_kfold(src.samples, k, seed=int(sel.get("fold_seed", 0)))[i - 1]
            src = src.subset(test_idx if key == "fold" else train_idx, f"{src.name}[{key}={i}/{k}]")
    log.info("%s: %d images %s", spec, len(src), src.counts())
    return src


def items_for(src: data.DatasetSource, classes: Sequence[str], modality: str | None = None) -> list["Item"]:
    """Training items: each sample's labels as a multi-hot target over ``classes`` (others ignored)."""
    from uopsl.train.torchdata import Item
    space = data.LabelSpace(tuple(classes), multi_label=True)
    out = []
    for s in src.samples:
        if modality is not None and s.modality != modality:
            continue
        out.append(Item(s.path, space.encode(s.labels, strict=False), s.patient or ""))
    return out


def split_classes(value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if len(set(names)) != len(names):
        raise ConfigError(f"a class is listed twice in {value!r}")
    return names


def train_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Optimisation options shared by pretrain and finetune."""
    opts = [
        click.option("--epochs", type=click.IntRange(1), default=10, show_default=True),
        click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True),
        click.option("--lr", type=float, default=1e-3, show_default=True, help="Learning rate of the head."),
        click.option("--lr-encoder", type=float, default=1e-4, show_default=True, help="Learning rate of the encoders."),
        click.option("--freeze-encoder", is_flag=True, help="Keep the image encoder fixed (linear-probe regime)."),
        click.option("--augment/--no-augment", default=True, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ..."),
        click.option("--save-every", type=click.IntRange(0), default=50, show_default=True,
                     help="Steps between resumable checkpoints (0: epoch ends only)."),
        click.option("--cache", "cache_dir", type=click.Path(path_type=Path), default=None,
                     help="Folder for preprocessed-image caches (default: OUT/cache)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f
