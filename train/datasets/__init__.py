"""Dataset readers behind :mod:`uopsl.train.data` (import from there, not from here).

``core``: samples, label spaces, the dataset fingerprint and the CSV/row plumbing
every reader shares; ``generic``: folder-per-class, generic CSV and the synthetic
generator's CSV; ``tvhl``, ``fundus_sets`` and ``oct_sets``: adapters for the real
layouts of public datasets; ``splits``: patient-level splits, grouped K-fold and
few-shot subsampling. Torch-free, like the rest of data loading before the
tensor stage.
"""
