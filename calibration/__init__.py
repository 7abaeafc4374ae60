"""uopsl.calibration: calibration sets, range collection and the one calibration table.

Layer 2: imports runtime only (preprocessing comes from uopsl.runtime.preprocess).
"""
