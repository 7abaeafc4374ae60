"""Shared CLI plumbing: lazy subcommands, logging setup, one-line errors.

Both ``uopsl`` and ``uopsl-screen`` are click groups built with
:class:`LazyGroup`, so ``--help`` and light commands never import torch.
:func:`main_entry` turns every failure into one clean line on stderr (the
traceback only with ``-v``) and the documented exit code:

* 0: done (``uopsl-screen run``: every photograph screened);
* 1: done, but not everything passed (``run``/``watch``: some photographs
  ungradable or unreadable; ``uopsl validate``: a file failed its gates);
* 2: nothing sensible could be done: a usage error, a bad bundle, an output
  folder that cannot be used, no photographs found, an OS error (disk full,
  read-only, no permission) or a bug. 1 is never used for these, since a
  script reads 1 as "the batch ran; look at the failed photographs";
* 130: interrupted (Ctrl-C); what was done is saved, and the message says so;
* 141: the output was cut off by a closed pipe (``uopsl-screen info BUNDLE | head -1``), as a shell
  reports for any program stopped by SIGPIPE;
* 143: stopped by SIGTERM (a shutdown, ``systemctl stop``, ``docker stop``; on
  Windows Ctrl-Break), handled as Ctrl-C is: the batch in hand is saved, CSV
  and report rewritten. (Closing the console window on Windows saves the same
  way, and Windows then ends the process with an exit code of its own.)
  (``watch`` treats both as its normal stop and exits 0 or 1.)

``-v``/``-q`` work before or after the subcommand name. Under torchrun, every
line a rank other than 0 writes starts with ``[rank N]`` (its log records, its
error line, a library's Python warnings); such a rank draws no progress bars.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import io
import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from collections.abc import Callable, Sequence
from typing import Any, cast

import click

from uopsl.runtime import progress as progress_bars
from uopsl.runtime.errors import ConfigError, UopslError
from uopsl.runtime.parallelism import check_parallelism, parallelism_limit
from uopsl.runtime.stopping import wait_until_saved

log = logging.getLogger(__name__)


class PointingGroup(click.Group):
    """A click group that, asked for a command the other CLI has, says where it is.

    ``elsewhere`` maps such a name to the words that point there. Why: ``uopsl-screen validate`` answered only
    "No such command 'validate'", though a device validates with ``uopsl validate --onnx-reference`` (a
    review, session 55); ``uopsl run`` likewise.
    """

    def __init__(self, *args: Any, elsewhere: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.elsewhere = dict(elsewhere or {})

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        name = click.utils.make_str(args[0]) if args else ""
        if name in self.elsewhere and self.get_command(ctx, name) is None:
            ctx.fail(f"No such command {name!r} in {ctx.info_name}: {self.elsewhere[name]}")
        return super().resolve_command(ctx, args)


class LazyGroup(PointingGroup):
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
            return share_verbosity(cmd)
        return super().get_command(ctx, cmd_name)


class ParallelCount(click.IntRange):
    """A thread or worker count: a whole number from 1 to the machine's limit
    (:func:`uopsl.runtime.parallelism.parallelism_limit`), refused as a usage error before any work starts;
    ``--help`` shows the range."""

    def __init__(self) -> None:
        super().__init__(min=1)

    def _describe_range(self) -> str:
        return f"1<=x<={parallelism_limit()}"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        number = click.INT.convert(value, param, ctx)
        what = f"--{param.name.replace('_', '-')}" if param is not None and param.name else "the count"
        try:
            check_parallelism(what, number)
        except ConfigError as exc:  # click names the option itself ("Invalid value for '--threads': 100000 is ...")
            self.fail(str(exc).removeprefix(f"{what} "), param, ctx)
        return int(number)


PARALLEL_COUNT = ParallelCount()


def _finite(number: float, value: Any, where: str, kind: click.ParamType, param: click.Parameter | None,
            ctx: click.Context | None) -> float:
    if not math.isfinite(number):
        kind.fail(f"{value!r} is not a finite number; give {where}", param, ctx)
    return number


class FiniteFloatRange(click.FloatRange):
    """click's ``FloatRange`` without NaN and infinities, which it lets through (``--timeout nan`` watched
    for ever): refused as a usage error that states the range."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return _finite(super().convert(value, param, ctx), value, f"a number in the range {self._describe_range()}",
                       self, param, ctx)


class FiniteFloat(click.types.FloatParamType):
    """A floating-point option without bounds that refuses NaN and infinities (``--sqnr-threshold nan``
    failed after a whole validation run)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return _finite(super().convert(value, param, ctx), value, "a number such as 30", self, param, ctx)


FINITE_FLOAT = FiniteFloat()


def plural(n: int, word: str) -> str:
    """``"1 image"``, ``"3 images"``: a count and its noun, for messages (nouns with a plain -s plural only)."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def option_given(name: str) -> bool:
    """Whether the current command's option ``name`` (its parameter name) was set by the user (command line
    or environment), not left at its default: for refusing an option the run would not use."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)


class _CliHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stderr handler a command installs: one per process, replaced when a command runs again in-process."""


def setup_logging(verbose: int) -> None:
    """Log level from ``-v`` (1: INFO, 2: DEBUG) or ``-q`` (-1: warnings and errors, and no progress bars).

    Installs one stderr handler on the root logger in place of the console handlers there (an earlier
    command's, ``basicConfig``'s plain stream handlers), so no line is printed twice. Other handlers stay: a
    program that calls a command's ``main`` in-process keeps its log files, and pytest its log capture
    (``basicConfig(force=True)`` removed them all).
    """
    level = logging.DEBUG if verbose >= 2 else logging.INFO if verbose >= 0 else logging.WARNING
    rank = torchrun_rank()
    fmt = "%(levelname)s %(name)s: %(message)s"
    root = logging.getLogger()
    for console in [h for h in root.handlers if type(h) in (_CliHandler, logging.StreamHandler)]:
        root.removeHandler(console)
    handler = _CliHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt) if rank is None else _RankLines(fmt, rank))
    if rank and verbose < 2:
        # Under torchrun every rank ran the same command and printed every line once per process; rank 0
        # speaks for the run, the others only warn (each names its rank). -vv shows every rank's lines.
        handler.addFilter(_warnings_only)
    root.addHandler(handler)
    root.setLevel(level)
    if rank:
        # A library's warnings.warn (torch's, say, on every rank) reached stderr bare, naming no rank:
        # through logging it gets the prefix. A bar cannot carry one, and rank 0's bar shows the progress.
        logging.captureWarnings(True)
    progress_bars.set_enabled(verbose >= 0 and not rank)
    # pydicom reports each oddity of a DICOM file twice (a log line and a Python warning, neither naming the
    # file; a decoder's failure with its traceback); the file's row says what matters. -vv shows them. pydicom
    # sets its logger's level when it is imported (lazily, later), so its records are filtered at the handler.
    # Only the commands do this: an application embedding the runtime keeps its own settings. The last call
    # decides (``-vv`` before or after the subcommand).
    filters = cast("list[Any]", warnings.filters)  # typed as a Sequence; it is the module's own list
    filters[:] = [f for f in filters if not _is_pydicom_filter(f)]
    if verbose < 2:
        handler.addFilter(_not_pydicom)  # this command's console only: other handlers keep their settings
        handler.addFilter(_not_onnxruntime_chatter)
        warnings.filterwarnings("ignore", module=_PYDICOM_MODULES)


_PYDICOM_MODULES = r"pydicom(\.|$)"


def torchrun_rank() -> int | None:
    """This process's rank when torchrun started it among several (its ``RANK``/``WORLD_SIZE``), else None."""
    try:
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    except ValueError:
        return None
    return rank if world > 1 else None


def speaks_for_the_run() -> bool:
    """Whether this process prints a command's closing lines: always, except torchrun's ranks other than 0."""
    return not torchrun_rank()


def rank_prefixed(text: str) -> str:
    """``text`` with ``[rank N] `` before each line on torchrun's ranks other than 0 (as their log records have).

    Every rank that fails prints its own error line to the same terminal: without the prefix the lines of two
    ranks could not be told apart, nor from rank 0's. Rank 0 and a run without torchrun get ``text`` as it is.
    """
    rank = torchrun_rank()
    if not rank:
        return text
    return "\n".join(f"[rank {rank}] {line}" for line in text.split("\n"))


def _say(text: str) -> None:
    """One message of :func:`main_entry` on stderr, rank-prefixed (:func:`rank_prefixed`)."""
    click.echo(rank_prefixed(text), err=True)


class _RankLines(logging.Formatter):
    """``[rank N] `` before every line of a record: a traceback's and a Python warning's source line too.

    A prefix in the format string marked the first line only; the rest of a multi-line record named no rank.
    """

    def __init__(self, fmt: str, rank: int) -> None:
        super().__init__(fmt)
        self.prefix = f"[rank {rank}] "

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(self.prefix + line for line in super().format(record).split("\n"))


def _warnings_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def _is_pydicom_filter(f: Any) -> bool:
    module = f[3]
    return f[0] == "ignore" and module is not None and getattr(module, "pattern", None) == _PYDICOM_MODULES


def _not_pydicom(record: logging.LogRecord) -> bool:
    return not (record.name == "pydicom" or record.name.startswith("pydicom."))


def _not_onnxruntime_chatter(record: logging.LogRecord) -> bool:
    """Drop ONNX Runtime's quantizer INFO lines, which it logs on the root logger under no name of its own.

    ``uopsl quantize`` and the demo printed one "Increased scale[...] for weight ..." line per convolution
    whose bias would overflow int32 (27 for the demo model): routine for the quantizer, noise to a reader.
    Its warnings still show but one: "Please consider (to run) pre-processing before quantization", printed
    twice per quantization, asks for what `uopsl export` already did (constant folding, BatchNorm folding,
    shape inference). ``-vv`` shows everything.
    """
    if record.name != "root" or f"{os.sep}onnxruntime{os.sep}" not in record.pathname:
        return True
    if record.levelno >= logging.WARNING:
        return not str(record.msg).startswith("Please consider")
    return False


def _is_verbose_flag(a: str) -> bool:
    return a in ("-v", "--verbose") or (a.startswith("-v") and set(a[1:]) == {"v"})


class _Sigterm:
    received = False


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[_Sigterm]:
    """Inside: SIGTERM raises KeyboardInterrupt in the main thread, so a shutdown saves work as Ctrl-C does.

    Why: a clinic PC shutting down, ``systemctl stop`` or ``docker stop`` send
    SIGTERM, whose default action ends the process at once: results.jsonl
    stays consistent (rows are fsync'ed per batch), but results.csv and
    report.html would only appear at the next run. Outside the main thread
    (an embedding application) nothing is changed.
    """
    got = _Sigterm()
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def on_term(signum: int, frame: Any) -> None:
        got.received = True
        raise KeyboardInterrupt("terminated (SIGTERM)")

    # Windows delivers no SIGTERM from outside; Ctrl-Break (SIGBREAK) is its console's other stop key, and
    # closing the console window comes through windows_console_close below.
    names = [n for n in ("SIGTERM", "SIGBREAK") if hasattr(signal, n)]
    previous = {n: signal.signal(getattr(signal, n), on_term) for n in names}
    try:
        with windows_console_close(got):
            yield got
    finally:
        for n, handler in previous.items():
            signal.signal(getattr(signal, n), handler)


#: Windows console control events after which the system ends the process: CTRL_CLOSE_EVENT, and
#: CTRL_LOGOFF_EVENT and CTRL_SHUTDOWN_EVENT, which reach only console processes that never loaded user32 (this
#: one does: others are ended at logoff and shutdown without any event). How long the handler holds the process
#: for the outputs to be written: by default Windows ends it 5 s after a close whatever the handler does.
_CLOSE_EVENTS = {2: "the console window was closed", 5: "the user is logging off", 6: "Windows is shutting down"}
CLOSE_GRACE_S = 4.5


def interrupt_main_thread() -> None:
    """Raise KeyboardInterrupt in the main thread, as Ctrl-C does, from any thread, if Ctrl-C would.

    ``signal.raise_signal`` runs Python's C-level SIGINT handler, which on Windows also wakes a main thread
    waiting in ``time.sleep`` (``watch`` between polls); ``_thread.interrupt_main`` would leave it asleep.
    Where Ctrl-C is ignored or ends the process at once (SIGINT set to SIG_IGN or SIG_DFL: a job started in
    the background, an embedding application), nothing is raised: the stop then behaves as before.
    """
    if not callable(signal.getsignal(signal.SIGINT)):
        log.debug("Ctrl-C is not handled by Python here: the stop cannot save first")
        return
    try:
        signal.raise_signal(signal.SIGINT)
    except (ValueError, OSError):
        import _thread

        _thread.interrupt_main()


class ConsoleCloseHandler:
    """The console control handler of :func:`windows_console_close` (a plain object, so tests can call it).

    Called by Windows in a thread of its own with the event's code. For a close (logoff, shutdown) it
    interrupts the main thread as Ctrl-C does, after any rewrite of the outputs in progress has ended
    (:mod:`uopsl.runtime.stopping`: an interrupt would abandon it), and waits until ``done`` is set (the
    command has written results.csv and the report) or ``grace_s`` has passed; then returns 1 (handled;
    Windows then ends the process). Other events (Ctrl-C, Ctrl-Break) return 0: the C runtime's own
    handler turns them into SIGINT and SIGBREAK, which Python handles.
    """

    def __init__(self, got: _Sigterm, interrupt: Callable[[], None], grace_s: float = CLOSE_GRACE_S) -> None:
        self.got = got
        self.interrupt = interrupt
        self.grace_s = grace_s
        self.done = threading.Event()

    def __call__(self, event: int) -> int:
        why = _CLOSE_EVENTS.get(int(event))
        if why is None:
            return 0
        deadline = time.monotonic() + self.grace_s
        self.got.received = True
        if wait_until_saved(deadline) and not self.done.is_set():
            self.interrupt()
        log.warning("%s: saving what was screened (up to %.1f s)", why, self.grace_s)
        self.done.wait(max(0.0, deadline - time.monotonic()))
        return 1


@contextlib.contextmanager
def windows_console_close(got: _Sigterm, kernel32: Any = None,
                          callback: Callable[[ConsoleCloseHandler], Any] | None = None,
                          interrupt: Callable[[], None] = interrupt_main_thread,
                          grace_s: float = CLOSE_GRACE_S) -> Iterator[None]:
    """On Windows, inside: closing the console window stops the command as Ctrl-C does, so results.csv and
    report.html are written before the process ends.

    Why: the C runtime turns these events into SIGBREAK, but its handler only sets a flag and Windows ends the
    process at once; CPython installs no console control handler of its own. So one is installed here
    (``SetConsoleCtrlHandler``, kernel32). ``kernel32`` and ``callback`` (wrapping the handler as a C
    function) stand in for ctypes in tests; ``grace_s`` is how long a close waits for the outputs. Elsewhere,
    or where the handler cannot be installed, nothing changes (results.jsonl is kept in any case; the next
    run rewrites the other two). Not run on Windows:
    the tests fake kernel32. A pip-installed ``uopsl-screen.exe`` runs Python as a child of a launcher,
    which may be ended first and take it along (not verified).
    """
    if kernel32 is None:
        if sys.platform != "win32":
            yield
            return
        try:
            import ctypes

            kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
            prototype = ctypes.WINFUNCTYPE(ctypes.c_int, ctypes.c_uint)  # type: ignore[attr-defined]
            callback = prototype
        except (ImportError, OSError, AttributeError) as exc:
            log.debug("no console control handler: %s", exc)
            yield
            return
    handler = ConsoleCloseHandler(got, interrupt, grace_s)
    c_handler = callback(handler) if callback is not None else handler  # kept referenced while installed
    try:
        installed = bool(kernel32.SetConsoleCtrlHandler(c_handler, 1))
    except Exception as exc:  # noqa: BLE001 - a console quirk must not stop the command
        log.debug("no console control handler: %s", exc)
        installed = False
    try:
        yield
    finally:
        handler.done.set()  # the outputs are written: a close being handled may let Windows end the process
        if installed:
            with contextlib.suppress(Exception):
                kernel32.SetConsoleCtrlHandler(c_handler, 0)


def main_entry(group: click.Group, argv: Sequence[str] | None = None, prog_name: str | None = None) -> int:
    """Run ``group``; map every failure to one line on stderr and an exit code (see the module docstring)."""
    # Redirected output on Windows is encoded in the ANSI code page, strictly: a bundle path or file name
    # outside it (Cyrillic, CJK) crashed `info > info.txt` with "a bug". Escapes instead, as on stderr.
    # (Put back afterwards: an application that calls main() in-process keeps its own stdout policy.)
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    escaped = False
    if reconfigure is not None and (getattr(sys.stdout, "errors", "strict") or "strict") == "strict":
        with contextlib.suppress(Exception):
            reconfigure(errors="backslashreplace")
            escaped = True
    term = _Sigterm()
    try:
        with sigterm_as_interrupt() as term:
            rc = _main_entry(group, argv, prog_name)
    except KeyboardInterrupt:
        if not term.received:
            raise
        rc = 130  # a stop from outside that landed after the command had saved and returned
    finally:
        if escaped and reconfigure is not None:
            with contextlib.suppress(Exception):
                reconfigure(errors="strict")
    return 143 if rc == 130 and term.received else rc


# What Ctrl-C prints where the command did not say what it saved (it printed a bare "aborted").
_INTERRUPTED = "interrupted (Ctrl-C) before the command finished: run the same command again to finish it"


def _main_entry(group: click.Group, argv: Sequence[str] | None, prog_name: str | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    opts = args[: args.index("--")] if "--" in args else args
    verbose = any(_is_verbose_flag(a) for a in opts)
    for cmd in list(group.commands.values()):
        share_verbosity(cmd)
    stdout = sys.stdout
    try:
        rv = group.main(args=args, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort as exc:
        # click turns Ctrl-C into Abort; the interrupt it wraps may say what was saved.
        cause = exc.__cause__ or exc.__context__
        said = str(cause).strip() if isinstance(cause, KeyboardInterrupt) else ""
        _say(said or _INTERRUPTED)
        return 130
    except click.ClickException as exc:
        if torchrun_rank():  # click writes usage and error itself: caught here to prefix each line
            shown = io.StringIO()
            exc.show(file=shown)
            _say(shown.getvalue().rstrip("\n"))
        else:
            exc.show()
        return 2
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except SystemExit:
        # Without standalone mode click exits by itself where the output was a closed pipe (``info | head -1``):
        # on EPIPE it swaps stdout for a wrapper that silences it, then exits 1, which read as "some
        # photographs failed". 141 is what a shell reports for a program stopped by SIGPIPE. Any other
        # SystemExit (a library's sys.exit) keeps its own code.
        if sys.stdout is not stdout:
            return 141
        raise
    except UopslError as exc:
        _traceback(verbose)
        _say(f"error: {_one_line(str(exc))}")
        return exc.exit_code
    except KeyboardInterrupt as exc:
        _say(_one_line(str(exc)) or _INTERRUPTED)
        return 130
    except OSError as exc:
        _traceback(verbose)
        _say(f"error: {_os_error(exc)}")
        return 2
    except ModuleNotFoundError as exc:
        from uopsl.runtime.optional import optional_hint

        _traceback(verbose)
        hint = optional_hint(exc.name or "")
        if hint is None:  # not a package an extra provides: a broken install or a bug
            _say(f"error: unexpected ModuleNotFoundError: {_one_line(str(exc))} (a bug or a broken install: "
                 "rerun with -v for the traceback and report it)")
        else:
            _say(f"error: this command needs the Python package '{exc.name}', which is not installed here. "
                 f"Install it: {hint}")
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug still gets one line and exit 2, never a bare traceback
        _traceback(verbose)
        _say(f"error: unexpected {type(exc).__name__}: {_one_line(str(exc))} (a bug: rerun with -v for "
             "the traceback and report it)")
        return 2
    return int(rv) if isinstance(rv, int) else 0


def _traceback(verbose: bool) -> None:
    if verbose:
        import traceback

        if torchrun_rank():
            _say(traceback.format_exc().rstrip("\n"))
        else:
            traceback.print_exc()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _os_error(exc: OSError) -> str:
    """``Read-only file system: romnt/thumbs; check ...``: the OS's words, the path, what to check."""
    what = exc.strerror or _one_line(str(exc)) or type(exc).__name__
    where = "" if exc.filename is None else f": {exc.filename}"
    if exc.filename2 is not None:
        where += f" -> {exc.filename2}"
    if exc.errno == errno.ENOSPC:
        return (f"{what}{where} (free some space on that disk, then run the same command again: what was saved "
                "before is kept; -v shows where it failed)")
    return f"{what}{where} (check the path, its permissions and the free disk space; -v shows where it failed)"


def version_line(prog: str) -> str:
    """``uopsl-screen 0.2.0 (reads bundle formats 1, 2, 3; preprocessing version 9)``, plus the git commit when
    run from a checkout.

    Why more than the number: an administrator upgrading a device needs to know which bundles it reads and
    which decoding it screens with (results folders record the preprocessing version); a development
    checkout's number names many commits.
    """
    from uopsl.runtime.bundle import SUPPORTED_FORMAT_VERSIONS  # imports OpenCV: only when asked
    from uopsl.runtime.preprocess import PREPROCESS_VERSION
    from uopsl.runtime.version import __version__, source_revision

    rev = source_revision()
    commit = ""
    if rev.get("git_commit"):
        commit = f"; git {str(rev['git_commit'])[:12]}" + (" with uncommitted changes" if rev.get("git_dirty") else "")
    return (f"{prog} {__version__} (reads bundle formats {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}; "
            f"preprocessing version {PREPROCESS_VERSION}{commit})")


def version_option(prog: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--version``: :func:`version_line`, then exit 0 (click's own option prints the number only)."""

    def show(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            click.echo(version_line(prog))
            ctx.exit()

    return click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=show,
                        help="Show the version, the bundle formats and the preprocessing version, and exit.")


def share_verbosity(cmd: click.Command) -> click.Command:
    """Give ``cmd`` the group's ``-v``/``-q`` too, so ``uopsl-screen run -v ...`` works like ``uopsl-screen -v run``.

    Only options the command does not define itself are added (idempotent).
    """
    names = {o for p in cmd.params for o in getattr(p, "opts", ())}
    if not names & {"-v", "--verbose"}:
        cmd.params.append(click.Option(["-v", "--verbose"], count=True, expose_value=False, is_eager=True,
                                       callback=_verbose_cb, help="More logging; with an error, its traceback."))
    if not names & {"-q", "--quiet"}:
        cmd.params.append(click.Option(["-q", "--quiet"], is_flag=True, expose_value=False,
                                       callback=_quiet_cb, help="Only warnings, errors and the final summary."))
    return cmd


def _verbose_cb(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    if value:  # absent after the subcommand: keep what the group set
        setup_logging(value)


def _quiet_cb(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        setup_logging(-1)


def verbose_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``-v/--verbose`` (repeatable) and ``-q/--quiet`` on a group: set up logging."""

    def _cb(ctx: click.Context, _param: click.Parameter, value: int) -> int:
        setup_logging(value)
        return value

    f = click.option("-q", "--quiet", "quiet", is_flag=True, help="Only warnings, errors and the final summary.",
                     callback=lambda c, p, v: setup_logging(-1) if v else None, expose_value=False)(f)
    return click.option("-v", "--verbose", count=True, expose_value=False, callback=_cb, is_eager=True,
                        help="More logging; with an error, show its traceback.")(f)
