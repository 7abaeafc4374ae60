"""uopsl.train: datasets, the synthetic retina generator, the UOPSL model, losses, loops and the ``uopsl`` CLI.

Top layer: may import export, calibration and runtime; nothing imports it.
"""
