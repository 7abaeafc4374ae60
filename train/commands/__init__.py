"""One module per ``uopsl`` subcommand; each defines a click command named ``command``."""
