"""The toolkit version, recorded in every bundle, checkpoint and report."""

__version__ = "0.1.0"
