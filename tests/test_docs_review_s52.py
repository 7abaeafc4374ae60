"""What a docs review (session 52) found the help texts getting wrong or leaving out."""

from __future__ import annotations

from click.testing import CliRunner

from uopsl.runtime.cli import cli as screen_cli
from uopsl.train.cli import cli as train_cli


def _help(cli, *args: str) -> str:  # type: ignore[no-untyped-def]
    got = CliRunner().invoke(cli, [*args, "--help"], terminal_width=200)
    assert got.exit_code == 0, got.output
    return " ".join(got.output.split())


def test_finetune_help_says_from_keeps_the_checkpoint_s_size_encoder_and_weights() -> None:
    text = _help(train_cli, "finetune")
    # "default: 320" shown unqualified read as the size stage 2 runs at; with --from it is the checkpoint's.
    assert "[default: 320" not in text and "[default: efficientnet_lite0" not in text
    assert "default 320). With --from: the checkpoint's (another value is refused)" in text
    assert "With --from: the checkpoint's (another is refused)" in text and "refused with --from" in text


def test_run_and_watch_help_give_their_exit_codes_and_every_output() -> None:
    run = _help(screen_cli, "run")
    assert "Exit codes: 0 every photograph screened, 1 some failed or were ungradable" in run
    assert "130 interrupted (Ctrl-C), 143 stopped by SIGTERM" in run and "run.json, thumbs/, overlays/" in run
    watch = _help(screen_cli, "watch")
    assert "Exit codes: 0 every photograph screened" in watch and "Ctrl-C and SIGTERM are the normal stop" in watch


def test_cache_folder_help_names_xdg_cache_home() -> None:
    for cmd in ("calibrate", "duplicates"):
        assert "$UOPSL_CACHE_DIR, else $XDG_CACHE_HOME/uopsl, else ~/.cache/uopsl" in _help(train_cli, cmd), cmd


def test_qat_help_says_why_its_device_defaults_to_the_cpu() -> None:
    assert "QAT has only been run on the CPU so far" in _help(train_cli, "qat")
