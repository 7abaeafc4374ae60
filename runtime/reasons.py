"""Why a photograph got no result, in words: what each reason tag means for the person holding the camera.

A tag comes from the quality gate (:data:`uopsl.runtime.quality.REASONS`) or an error path (the reasons of
:class:`uopsl.runtime.errors.ImageError`, the pipeline's ``inference_error`` and ``internal_error``). The report
shows these words, the CSV's ``advice`` column and the terminal summary quote them. Why a module of its own:
:mod:`uopsl.runtime.report` imports :mod:`uopsl.runtime.results`, and both need the words, so they live here,
below both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from uopsl.runtime.optional import extra_hint


@dataclass(frozen=True)
class ReasonText:
    """What a reason tag means for the person holding the camera: a short label and one sentence of advice."""

    label: str
    advice: str


# Every tag the quality gate (runtime/quality.py REASONS) and the pipeline's error paths
# (errors.py ImageError reasons, pipeline.py inference_error/internal_error) give.
_RETAKE_NO_FOV = "The round view of the retina was not found: centre the eye in the frame, then retake."
REASON_TEXT: dict[str, ReasonText] = {
    "too_dark": ReasonText("too dark", "Too dark: check the flash and the pupil dilation, then retake."),
    "too_bright": ReasonText(
        "too bright", "Too bright (over-exposed): lower the flash or remove stray light, then retake."),
    "grayscale": ReasonText(
        "not a colour photograph",
        "Not a colour fundus photograph (greyscale: an OCT scan, red-free or scanned image?): "
        "use the colour photograph."),
    "not_fundus_colour": ReasonText(
        "colours not of a fundus photograph",
        "Not the red-orange of a colour fundus photograph (blue or green instead): a red-free or filtered "
        "photograph, a picture of something else, or (from your own software) an image in BGR channel order: "
        "use the colour photograph, or convert the image to RGB (cv2.cvtColor(image, cv2.COLOR_BGR2RGB)) or "
        "pass the file."),
    "no_fov": ReasonText("retina not in view", _RETAKE_NO_FOV),
    "no_fundus_field_of_view": ReasonText("retina not in view", _RETAKE_NO_FOV),
    "several_fov": ReasonText(
        "several eyes in one image",
        "The image shows more than one view of the retina (both eyes side by side, or a montage): "
        "screen each eye's own photograph."),
    "low_contrast": ReasonText(
        "hazy or washed out",
        "Hazy or washed out: clean the lens, check focus and reflections (a cataract can cause this), retake."),
    "blurred": ReasonText("blurred", "Blurred: refocus and ask the patient to keep still, then retake."),
    "noisy": ReasonText("grainy", "Grainy (noisy): use more light or a lower camera gain (ISO), then retake."),
    "too_small": ReasonText(
        "image too small",
        "Image too small (too few pixels): copy the full-size photograph from the camera, not a preview."),
    "too_large": ReasonText(
        "image too large",
        "Image too large for this device: export a smaller copy from the camera software, then screen that."),
    "undecodable": ReasonText(
        "damaged file",
        "The file is damaged or not an image (empty, cut short or another format): copy it again from the camera."),
    "unsupported_format": ReasonText(
        "file type not supported",
        "The file is not an ordinary photograph file (JPEG, PNG, TIFF, BMP, WebP, JPEG 2000, PNM or DICOM), holds "
        "several pictures, or uses a variant this program cannot read (12-bit or lossless JPEG): export the "
        "photograph as an ordinary JPEG, one per file, then screen it."),
    "reader_missing": ReasonText(
        "reader not installed",
        "This file needs an optional reader or decoder that is not installed on this computer (the detail "
        f"names it; DICOM: {extra_hint('dicom')}): install it and run the same command again, or export "
        "the photograph as JPEG."),
    "unreadable": ReasonText(
        "cannot open file",
        "The file could not be opened (missing, moved or not permitted): check it is there, or copy it again."),
    "decoder_crash": ReasonText(
        "file stopped the reader",
        "Reading this file stopped the program's image reader (a damaged or unusual file, or too little memory); "
        "the other photographs were screened: copy it again from the camera or export it as JPEG, then run the "
        "same command again; if it repeats, send this file to support."),
    "inference_error": ReasonText(
        "program failure",
        "The screening program failed on this photograph (not the photograph's fault): run the same command again."),
    "internal_error": ReasonText(
        "program failure",
        "Unexpected program error: run again; if it repeats, send this file and the detail below to support."),
}
# Which tag explains the others: a black frame is also "no retina", "low contrast", "blurred" and
# "greyscale", so exposure comes first; a greyscale image has no round colour field either.
# Several fields of view come before exposure: each eye may be well exposed, and the retake is another image.
_REASON_ORDER = ("unreadable", "undecodable", "unsupported_format", "reader_missing", "too_large", "too_small",
                 "several_fov", "too_dark", "too_bright", "grayscale", "not_fundus_colour", "no_fov", "no_fundus_field_of_view", "low_contrast", "blurred", "noisy",
                 "decoder_crash", "inference_error", "internal_error")


#: What a row without a result and without a reason (an older results file) is told to do.
NO_RESULT_ADVICE = "No result: take or copy the photograph again."


def reason_text(tag: str) -> ReasonText:
    """The label and advice for one tag; an unknown tag (a new error type) still says something usable."""
    known = REASON_TEXT.get(tag)
    if known is not None:
        return known
    return ReasonText(tag.replace("_", " "), f"Could not be screened ({tag.replace('_', ' ')}): run again or ask support.")


def order_reasons(tags: Sequence[str]) -> list[str]:
    """The tags, main cause first (see ``_REASON_ORDER``), duplicates dropped, unknown tags last in their order."""
    uniq = list(dict.fromkeys(str(t) for t in tags))
    rank = {t: i for i, t in enumerate(_REASON_ORDER)}
    return sorted(uniq, key=lambda t: (rank.get(t, len(rank)), uniq.index(t)))


def reason_label(tags: Sequence[str]) -> str:
    """The main cause's short label (what the terminal summary prints next to a file name)."""
    ordered = order_reasons(tags)
    return reason_text(ordered[0]).label if ordered else ""
