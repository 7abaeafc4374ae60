"""Shared CLI plumbing: lazy subcommands, logging setup, one-line errors.

Both ``uopsl`` and ``uopsl-screen`` are click groups built with
:class:`LazyGroup`, so ``--help`` and light commands never import torch.
:func:`main_entry` turns a :class:`UopslError` into one clean line on stderr
(the traceback only with ``-v``) and the documented exit code.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from uopsl.runtime.errors import UopslError

log = logging.getLogger(__name__)


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when used.

    ``lazy`` maps a command name to ``"module.path:attribute"``.
    """

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            mod_name, attr = self.lazy[cmd_name].split(":")
            cmd = getattr(importlib.import_module(mod_name), attr)
            if not isinstance(cmd, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            return cmd
        return super().get_command(ctx, cmd_name)


def setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose >= 2 else logging.INFO if verbose >= 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


def main_entry(group: click.Group, argv: Sequence[str] | None = None, prog_name: str | None = None) -> int:
    """Run ``group``; map toolkit errors to one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in ("-v", "--verbose") or (a.startswith("-v") and set(a[1:]) == {"v"}) for a in args)
    try:
        rv = group.main(args=args, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except UopslError as exc:
        if verbose:
            import traceback

            traceback.print_exc()
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return int(rv) if isinstance(rv, int) else 0


def verbose_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``-v/--verbose`` (repeatable) and ``-q/--quiet`` on a group: set up logging."""

    def _cb(ctx: click.Context, _param: click.Parameter, value: int) -> int:
        setup_logging(value)
        return value

    f = click.option("-q", "--quiet", "quiet", is_flag=True, help="Only warnings and errors.",
                     callback=lambda c, p, v: setup_logging(-1) if v else None, expose_value=False)(f)
    return click.option("-v", "--verbose", count=True, expose_value=False, callback=_cb, is_eager=True,
                        help="More logging; with an error, show its traceback.")(f)
