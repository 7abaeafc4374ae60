"""The ``uopsl`` command: training, evaluation, export, calibration and validation.

Subcommands live one per module in :mod:`uopsl.train.commands` and are imported
only when invoked, so ``uopsl --help`` and ``uopsl synth`` never load torch.
"""

from __future__ import annotations

import click

from uopsl.runtime.clikit import LazyGroup, main_entry, verbose_option, version_option

_COMMANDS = {
    "synth": "uopsl.train.commands.synth:command",
    "pretrain": "uopsl.train.commands.pretrain:command",
    "finetune": "uopsl.train.commands.finetune:command",
    "evaluate": "uopsl.train.commands.evaluate:command",
    "zero-shot": "uopsl.train.commands.zero_shot:command",
    "explain": "uopsl.train.commands.explain:command",
    "export": "uopsl.train.commands.export:command",
    "intended-use": "uopsl.train.commands.intended_use:command",
    "keygen": "uopsl.train.commands.sign:keygen_command",
    "sign": "uopsl.train.commands.sign:sign_command",
    "triton": "uopsl.train.commands.triton:command",
    "calibrate": "uopsl.train.commands.calibrate:command",
    "quantize": "uopsl.train.commands.quantize:command",
    "demo": "uopsl.train.commands.demo:command",
    "validate": "uopsl.train.commands.validate:command",
    "build-engine": "uopsl.train.commands.build_engine:command",
    "qat": "uopsl.train.commands.qat:command",
    "duplicates": "uopsl.train.commands.duplicates:command",
}


# Shown under `uopsl --help`; the full list of options per kind is in uopsl.train.commands.common.
_DATASETS = """\b
Datasets (--data, --fundus, --oct, --val): KIND:PATH[:key=value,...]
  synthetic:DIR     `uopsl synth` output      folder:DIR      DIR/<class>/*
  csv:FILE          path + label/labels       tvhl:DIR:task=four_class|referable_dr|dme
  aptos, messidor2, idrid, rfmid, odir, oct2017, octdl: the public sets' layouts
  Other column names: csv:FILE:path_column=image,label_column=diagnosis (also
  multi_label_column, label_columns=a+b for 0/1 columns, patient_column, ...).
  Every kind: split=train|val|test (patient-level 70/15/15; the publisher's own
  split on idrid, rfmid, oct2017), fold=I/K, notfold=I/K; duplicates=0.9 keeps
  copies of a photograph (uopsl duplicates) on one side; lists joined with +
  (classes=normal+dr). A bare folder with labels.csv is synthetic, else folder.
  Hold out by patient: train on KIND:DIR:split=train (+ --val ...:split=val;
  on idrid, which ships no val part: split=train,notfold=1/5 + --val
  ...:split=train,fold=1/5) and evaluate on ...:split=test; a folder trained
  on whole has no held-out part.
  Example: uopsl evaluate ck/ft --data synthetic:syn-test --out ev
"""


@click.group(cls=LazyGroup, lazy=_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=_DATASETS,
             elsewhere={name: f"screening is `uopsl-screen {name}` (uopsl-screen --help lists its commands)"
                        for name in ("run", "watch", "verify", "info", "bench")})
@version_option("uopsl")
@verbose_option
def cli() -> None:
    """uopsl: train, evaluate, export and validate UOPSL retinal screening models."""


def main() -> None:
    raise SystemExit(main_entry(cli, prog_name="uopsl"))


if __name__ == "__main__":
    main()
