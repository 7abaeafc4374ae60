"""The ``uopsl`` command: training, evaluation, export, calibration and validation.

Subcommands live one per module in :mod:`uopsl.train.commands` and are imported
only when invoked, so ``uopsl --help`` and ``uopsl synth`` never load torch.
"""

from __future__ import annotations

import click

from uopsl.runtime.clikit import LazyGroup, main_entry, verbose_option
from uopsl.runtime.version import __version__

_COMMANDS = {
    "synth": "uopsl.train.commands.synth:command",
    "pretrain": "uopsl.train.commands.pretrain:command",
    "finetune": "uopsl.train.commands.finetune:command",
    "evaluate": "uopsl.train.commands.evaluate:command",
    "zero-shot": "uopsl.train.commands.zero_shot:command",
    "explain": "uopsl.train.commands.explain:command",
    "export": "uopsl.train.commands.export:command",
    "calibrate": "uopsl.train.commands.calibrate:command",
    "quantize": "uopsl.train.commands.quantize:command",
    "demo": "uopsl.train.commands.demo:command",
    "validate": "uopsl.train.commands.validate:command",
    "build-engine": "uopsl.train.commands.build_engine:command",
    "qat": "uopsl.train.commands.qat:command",
}


@click.group(cls=LazyGroup, lazy=_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="uopsl")
@verbose_option
def cli() -> None:
    """uopsl: train, evaluate, export and validate UOPSL retinal screening models."""


def main() -> None:
    raise SystemExit(main_entry(cli, prog_name="uopsl"))


if __name__ == "__main__":
    main()
