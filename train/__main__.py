"""``python -m uopsl.train`` (and ``torchrun ... -m uopsl.train``): the ``uopsl`` command."""

from uopsl.train.cli import main

if __name__ == "__main__":
    main()
