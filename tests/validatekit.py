"""Shared pieces of the `uopsl validate` tests: the demo bundle's classes, and the command run in-process."""

from __future__ import annotations

import numpy as np

from uopsl.runtime.backends import Availability
from uopsl.runtime.bundle import ClassSpec
from uopsl.runtime.clikit import LazyGroup, main_entry
from uopsl.runtime.preprocess import PreprocessConfig

# The demo bundle's classes and operating thresholds (/tmp/s8/demo_det/bundle, a review's input).
DEMO_CLASSES = (ClassSpec("normal", threshold=0.10487), ClassSpec("dr", threshold=0.87914, referable=True),
                ClassSpec("dme", threshold=0.28952, referable=True), ClassSpec("amd", threshold=0.012007, referable=True),
                ClassSpec("glaucoma", threshold=0.013595, referable=True))
NAMES = tuple(c.name for c in DEMO_CLASSES)
THRESHOLDS = np.array([c.threshold for c in DEMO_CLASSES])
PRE = PreprocessConfig(size=32)
N = 120
CPU = Availability(("CPUExecutionProvider",))


def uopsl_validate(argv: list[str]) -> int:
    """Run ``uopsl validate`` in this process (same LazyGroup plumbing and exit-code mapping as the CLI)."""
    import click

    @click.group(cls=LazyGroup, lazy={"validate": "uopsl.train.commands.validate:command"})
    def cli() -> None:
        pass

    return main_entry(cli, ["validate", *argv], prog_name="uopsl")
