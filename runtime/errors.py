"""One error hierarchy for the whole toolkit.

Every error says what was received, what was expected and what to do. The CLIs
turn a :class:`UopslError` into one clean line (and a traceback with ``-v``);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import shlex


class UopslError(Exception):
    """Base class of every error the toolkit raises on purpose."""

    exit_code = 2


class ConfigError(UopslError, ValueError):
    """A parameter or configuration value is out of range or inconsistent."""


class MissingDependencyError(UopslError, ImportError):
    """An optional package is needed for this operation but is not installed."""


class ImageError(UopslError):
    """An image cannot be used. ``reason`` is a short machine-readable tag."""

    reason = "unreadable"

    def __init__(self, message: str, *, source: str | None = None) -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class ImageDecodeError(ImageError):
    """The bytes are not a decodable image (empty, truncated, wrong format)."""

    reason = "undecodable"


class ImageFormatError(ImageDecodeError):
    """The file is an image format (or a variant: 12-bit, lossless JPEG) the runtime does not read."""

    reason = "unsupported_format"


class ImageReaderMissingError(ImageFormatError):
    """The file's format needs an optional reader that is not installed here (DICOM without pydicom).

    Not a property of the file: a rerun after installing the reader screens it (its reason is not final).
    """

    reason = "reader_missing"


class ImageReadError(ImageError):
    """The file cannot be read at all (missing, a folder, no permission, I/O error)."""

    reason = "unreadable"


class ImageTooSmallError(ImageError):
    """The image is too small to hold a usable field of view."""

    reason = "too_small"


class ImageTooLargeError(ImageError):
    """The image has more pixels than the configured limit."""

    reason = "too_large"


def too_many_pixels(w: int, h: int, max_pixels: int, source: str | None = None) -> ImageTooLargeError:
    """The error for a picture over the pixel limit: one message wherever its size was found (a header, a decode)."""
    return ImageTooLargeError(
        f"{w}x{h} pixels exceeds the limit of {max_pixels}; export a smaller copy from the camera "
        "software (Python API: PreprocessConfig.max_pixels raises the limit)",
        source=source,
    )


class DataError(UopslError):
    """A dataset file (CSV, folder layout, label) is malformed."""


class BundleError(UopslError):
    """A deployment bundle is missing, malformed, tampered with or incompatible.

    ``problem``: for a manifest that cannot be read, what is wrong with it without the advice the message adds
    (set by :meth:`uopsl.runtime.bundle.Manifest.from_dict`; a manifest that also fails its own checksum is
    reported with that problem and other advice). None otherwise.
    """

    problem: str | None = None


class EngineMismatchError(BundleError):
    """A TensorRT engine was built for another TensorRT version or GPU."""


class BackendError(UopslError):
    """An inference backend cannot run the model or was fed the wrong input."""


class BackendClosedError(BackendError):
    """Inference was asked of a backend that is not open (never entered, or closed meanwhile).

    Not a failure of the model or the device: the screening pipeline stops at once
    instead of recording the photographs as inference failures.
    """


class ScreenerClosedError(BackendClosedError, ConfigError):
    """A :class:`~uopsl.runtime.api.Screener` was asked to screen after it was closed.

    Both a :class:`BackendClosedError` and a :class:`ConfigError`: a Screener closed by another thread
    raised a ConfigError when the close landed before a call and the backend's BackendClosedError when
    it landed during the call's inference. ``except BackendClosedError`` now catches both moments, and
    code written against earlier versions (``except ConfigError``) still catches what it caught.
    """


class CheckpointError(UopslError):
    """A checkpoint is missing, malformed or does not fit the model."""


class ParityError(UopslError):
    """A deployed model failed its parity gates against the reference."""

    exit_code = 1


class ExportError(UopslError):
    """A model could not be exported, quantized or built into a valid deployable file."""


_PLAIN_ARG = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+./\\:=,@%")


def command_word(value: object, *, windows: bool | None = None) -> str:
    """``value`` as one word of a command line suggested in a message, so that a suggestion naming a
    folder with a space in it can be pasted as it stands: as it is when it holds only plain characters;
    else in single quotes on POSIX shells (``shlex.quote``: nothing inside is expanded, not even ``$``),
    in double quotes on Windows (``windows``: None means this machine), which cmd and PowerShell read as
    one word."""
    text = str(value)
    on_windows = windows if windows is not None else os.name == "nt"
    plain = _PLAIN_ARG if on_windows else _PLAIN_ARG - {"\\"}  # a POSIX shell reads a backslash as an escape
    if text and all(c in plain for c in text):
        return text
    if on_windows:
        return '"' + text.replace('"', '\\"') + '"'
    return shlex.quote(text)
