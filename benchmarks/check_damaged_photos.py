"""Are damaged photographs refused, and real ones left alone? (session 60 review: files screened 'ok' with a verdict)

A power cut or an interrupted copy leaves a file of the right size whose end is zero bytes; the review screened
such BMP, TIFF and WebP files as ``ok`` and gave them a verdict. For the TVHL fundus photographs (JPEG) and
their re-encodings as uncompressed TIFF (IFD at offset 8, as Pillow writes it), BMP, PNG, WebP (OpenCV's default:
lossless), lossy WebP (quality 90), JPEG 2000 and PPM:

a. every photograph is screened as it is: none may be refused (each refused one is listed, with the reason);
b. damaged variants: the first 70 / 85 / 95 % of the file followed by zero bytes up to the same size, and the
   same at a point drawn uniformly in 50-99 % (``--seed``); for the JPEGs also the splices the review made, a
   4 KB-aligned block replaced by another photograph's bytes at the same offset, and another photograph's tail
   from a random point. Each is written into ``--work``, screened from there (``preprocess_file``, default
   configuration, then the quality gate) and removed: refused (an image error), ungradable (the gate), or
   gradable (it would get a verdict). ``--before`` adds the counts a run on other code saved (``--save``);
c. decode cost: median of ``--timing-runs`` decodes of one photograph in each format (the first whose
   picture has black first and last rows: the zero-fill check reads the most there), and the zero-fill
   check alone over every photograph;
d. ``--webp-margins``: how many zero bytes libwebp itself ends image data with (the margin of the WebP rule):
   the photographs at qualities 1-95 and lossless, and photographs and noise pictures given flat bands or
   padded canvases.

The photographs are read from ``--tvhl`` and never copied into the repository. Reproduce (the numbers of
session 60, 2 cores: the first run 10 minutes, as it encodes the slow formats into ``--work`` and screens every
damaged file to the gate; the second 4 minutes):

    git stash push -q -- runtime/imagefile.py runtime/preprocess.py    # the code before the change
    python benchmarks/check_damaged_photos.py --work /tmp/damaged --save /tmp/damaged/before.json
    git stash pop -q
    python benchmarks/check_damaged_photos.py --work /tmp/damaged --before /tmp/damaged/before.json --webp-margins
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from uopsl.runtime import imagefile
from uopsl.runtime import preprocess as P
from uopsl.runtime.errors import ImageError
from uopsl.runtime.preprocess import PreprocessConfig, decode, preprocess_file
from uopsl.runtime.quality import assess

ZERO_FRACTIONS = (70, 85, 95)


def tiff_rgb(bgr: np.ndarray) -> bytes:
    """An uncompressed 8-bit RGB TIFF, one strip, its IFD at offset 8 (the layout Pillow writes)."""
    h, w = bgr.shape[:2]
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2), (273, 4, 1, None),
               (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, w * h * 3), (284, 3, 1, 1)]
    bits_at = 8 + 2 + 12 * len(entries) + 4
    data_at = bits_at + 6
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        value = bits_at if tag == 258 else data_at if tag == 273 else value
        field = struct.pack("<HH", value, 0) if typ == 3 and count == 1 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, count) + field
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(4) + struct.pack("<HHH", 8, 8, 8) \
        + np.ascontiguousarray(bgr[:, :, ::-1]).tobytes()


def _cv2(ext: str, params: list[int] | None = None) -> Callable[[np.ndarray], bytes]:
    def encode(bgr: np.ndarray) -> bytes:
        ok, buf = cv2.imencode(ext, bgr, params or [])
        if not ok:
            raise SystemExit(f"OpenCV could not encode {ext}")
        return buf.tobytes()
    return encode


# name -> (file extension, encoder from BGR pixels or None for the original JPEG, cached in --work: slow to encode)
FORMATS: dict[str, tuple[str, Callable[[np.ndarray], bytes] | None, bool]] = {
    "jpeg": (".jpg", None, False),
    "tiff": (".tif", tiff_rgb, False),
    "bmp": (".bmp", _cv2(".bmp"), False),
    "png": (".png", _cv2(".png"), True),
    "webp": (".webp", _cv2(".webp"), True),
    "webp-q90": (".webp", _cv2(".webp", [cv2.IMWRITE_WEBP_QUALITY, 90]), True),
    "jp2": (".jp2", _cv2(".jp2"), True),
    "ppm": (".ppm", _cv2(".ppm"), False),
}


def imread(data: bytes, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        raise SystemExit("OpenCV could not decode a photograph")
    return img


def encoded(path: Path, fmt: str, work: Path) -> bytes:
    """The photograph at ``path`` as ``fmt`` (slow encodings cached under ``work``/encoded)."""
    ext, encode, cache = FORMATS[fmt]
    if encode is None:
        return path.read_bytes()
    cached = work / "encoded" / fmt / (path.stem + ext)
    if cache and cached.is_file():
        return cached.read_bytes()
    data = encode(imread(path.read_bytes()))
    if cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(data)
    return data


def zero_tail(data: bytes, percent: float) -> bytes:
    """The first ``percent`` % of the file, then zero bytes up to its size."""
    k = int(len(data) * percent / 100)
    return data[:k] + bytes(len(data) - k)


def variants(data: bytes, fmt: str, other: bytes, rng: random.Random) -> dict[str, bytes]:
    out = {f"zero tail at {f} %": zero_tail(data, f) for f in ZERO_FRACTIONS}
    out["zero tail at 50-99 %"] = zero_tail(data, rng.uniform(50, 99))
    if fmt == "jpeg":
        k = rng.randrange(len(data) // 4, 3 * len(data) // 4) // 4096 * 4096
        out["splice: 4 KB block of another photograph"] = data[:k] + other[k : k + 4096] + data[k + 4096 :]
        k2 = rng.randrange(len(other) // 4, 3 * len(other) // 4)
        out["splice: another photograph's tail"] = data[:k] + other[k2:]
    return out


def screen(data: bytes, name: str, work: Path, cfg: PreprocessConfig, keep: bool) -> tuple[str, str]:
    """(outcome, detail): 'refused' (the error), 'ungradable' (the gate's reasons) or 'gradable'."""
    path = work / "variants" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    try:
        verdict = assess(preprocess_file(path, cfg))
    except ImageError as exc:
        return "refused", f"{type(exc).__name__}: {exc}"
    finally:
        if not keep:
            path.unlink()
    return ("gradable", "") if verdict.gradable else ("ungradable", ",".join(verdict.reasons))


def median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def check_alone(fmt: str, data: bytes) -> Callable[[], object] | None:
    """The zero-fill check of this change alone, on ``data`` (None: the code run has none for ``fmt``)."""
    if fmt in ("tiff", "bmp", "ppm") and hasattr(P, "_zero_filled_cut"):
        img = imread(data, cv2.IMREAD_UNCHANGED)
        return lambda: P._zero_filled_cut(img, imagefile.trailing_zero_bytes(data), P._CUT_LIT)
    if fmt.startswith("webp") and hasattr(imagefile, "webp_zero_fill"):
        return lambda: imagefile.webp_zero_fill(data)
    if fmt == "jp2" and hasattr(imagefile, "j2k_complete"):
        return lambda: imagefile.j2k_complete(data)
    return None


def timing(paths: list[Path], formats: list[str], work: Path, runs: int) -> dict[str, dict[str, float | str]]:
    photo = next((p for p in paths if not (lambda m: m[0].any() or m[-1].any())(decode(p.read_bytes()))), paths[0])
    out: dict[str, dict[str, float | str]] = {}
    for fmt in formats:
        data = encoded(photo, fmt, work)
        decode(data)  # warm-up
        row: dict[str, float | str] = {"photo": photo.name, "decode_ms": median_ms(lambda: decode(data), runs)}
        alone = check_alone(fmt, data)
        if alone is not None:
            row["check_ms"] = median_ms(alone, runs)
            each = []
            for p in paths:
                fn = check_alone(fmt, encoded(p, fmt, work))
                assert fn is not None
                t0 = time.perf_counter()
                fn()
                each.append(time.perf_counter() - t0)
            row["check_all_median_ms"] = 1e3 * statistics.median(each)
            row["check_all_max_ms"] = 1e3 * max(each)
        out[fmt] = row
    return out


def webp_margins(paths: list[Path], every: int, pictures: int, seed: int) -> list[str]:
    """How many zero bytes libwebp ends image data with, in bits per 16x16 block, on real and hard pictures."""
    def zero_bits(data: bytes, w: int, h: int) -> float:
        at = 12
        while at + 8 <= len(data):
            kind, size = data[at : at + 4], int.from_bytes(data[at + 4 : at + 8], "little")
            if kind in (b"VP8 ", b"VP8L"):
                body = data[at + 8 : at + 8 + size]
                return 8 * (len(body) - len(body.rstrip(b"\x00"))) / (math.ceil(w / 16) * math.ceil(h / 16))
            at += 8 + size + (size & 1)
        raise SystemExit("no VP8 chunk")

    lines = []
    worst: dict[int, tuple[float, str]] = {}
    for p in paths[::every]:
        bgr = imread(p.read_bytes())
        for q in (1, 5, 20, 50, 75, 90, 95, 101):
            bits = zero_bits(_cv2(".webp", [cv2.IMWRITE_WEBP_QUALITY, q])(bgr), 512, 512)
            if bits > worst.get(q, (-1.0, ""))[0]:
                worst[q] = (bits, p.name)
    for q, (bits, name) in sorted(worst.items()):
        lines.append(f"| TVHL photographs (1 in {every}), {'lossless' if q > 100 else f'quality {q}'} | "
                     f"{bits:.3f} ({name}) |")
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    hard: list[tuple[float, str]] = []
    for _ in range(pictures):
        if rng.random() < 0.6:
            bgr = imread(rng.choice(paths).read_bytes())
            side = rng.choice((512, 1024, 1536))
            if side != 512:
                bgr = np.asarray(cv2.resize(bgr, (side, side), interpolation=cv2.INTER_CUBIC), np.uint8)
            what = f"photograph {side} px"
        else:
            side = rng.choice((256, 512, 1024))
            noise = nrng.integers(0, 256, (side, side, 3), np.uint8)
            bgr = np.asarray(cv2.GaussianBlur(noise, (0, 0), rng.uniform(0.5, 4)), np.uint8)
            what = f"noise {side} px"
        h, w = bgr.shape[:2]
        layout, colour, f = rng.choice(("band", "letterbox", "canvas")), rng.choice((0, 0, 8, 128, 255)), \
            rng.uniform(0.05, 0.8)
        if layout == "band":
            bgr[h - int(h * f):] = colour
        elif layout == "letterbox":
            bgr[: int(h * f / 2)] = colour
            bgr[h - int(h * f / 2):] = colour
        else:
            canvas = np.full((int(h * (1 + f)), int(w * (1 + f)), 3), colour, np.uint8)
            canvas[:h, :w] = bgr
            bgr = canvas
        q = rng.choice((5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 101))
        h, w = bgr.shape[:2]
        bits = zero_bits(_cv2(".webp", [cv2.IMWRITE_WEBP_QUALITY, q])(bgr), w, h)
        hard.append((bits, f"{what}, {layout} of {colour} ({f:.2f}), {'lossless' if q > 100 else f'quality {q}'}"))
    hard.sort(reverse=True)
    lines.append(f"| {pictures} photographs and noise pictures with flat bands or canvases, worst | "
                 f"{hard[0][0]:.3f} ({hard[0][1]}) |")
    lines.append(f"| same, second worst | {hard[1][0]:.3f} ({hard[1][1]}) |")
    lines.append(f"| same, worst of the photographs | "
                 + next((f"{b:.3f} ({d})" for b, d in hard if d.startswith("photograph")), "none") + " |")
    return lines


def count(results: dict[str, str] | None, outcome: str, only: dict[str, str] | None = None) -> str:
    """How many of ``results`` are ``outcome`` (of the photographs in ``only``, when given: the same ones)."""
    if results is None:
        return "n/a"
    return str(sum(v == outcome for k, v in results.items() if only is None or k in only))


def print_outcomes(formats: list[str], outcomes: dict[str, dict[str, dict[str, str]]], refused_real: list[str],
                   before: dict[str, Any] | None) -> None:
    """Tables a (real photographs refused) and b (damaged files), with the ``before`` run's counts beside them."""
    old: dict[str, dict[str, dict[str, str]]] = before["outcomes"] if before else {}
    print("\n## a. Real photographs refused (must be 0)\n")
    print("| format | refused | of |" + (" refused before |" if before else ""))
    print("|---|---|---|" + ("---|" if before else ""))
    for fmt in formats:
        got = outcomes[fmt]["photograph as it is"]
        was = old.get(fmt, {}).get("photograph as it is")
        print(f"| {fmt} | {count(got, 'refused')} | {len(got)} |"
              + (f" {count(was, 'refused', got)} |" if before else ""))
    for line in refused_real:
        print(f"- {line}")
    print("\n## b. Damaged files: refused, and those left that pass the gate (would get a verdict)\n")
    print("| format | damage | n | refused now | gradable now |"
          + (" refused before | gradable before |" if before else ""))
    print("|---|---|---|---|---|" + ("---|---|" if before else ""))
    for fmt in formats:
        for kind, got in outcomes[fmt].items():
            if kind == "photograph as it is":
                continue
            was = old.get(fmt, {}).get(kind)
            print(f"| {fmt} | {kind} | {len(got)} | {count(got, 'refused')} | {count(got, 'gradable')} |"
                  + (f" {count(was, 'refused', got)} | {count(was, 'gradable', got)} |" if before else ""))


def print_timings(timings: dict[str, dict[str, float | str]], runs: int, before: dict[str, Any] | None) -> None:
    """Table c: decode cost now (and in the ``before`` run), and the check alone."""
    old: dict[str, dict[str, float]] = before.get("timing", {}) if before else {}
    print(f"\n## c. Decode cost (median of {runs} runs; check alone: median and max over every photograph)\n")
    print("| format | photograph | decode ms | check alone ms | check, all photographs: median / max ms |"
          + (" decode ms before |" if before else ""))
    print("|---|---|---|---|---|" + ("---|" if before else ""))
    for fmt, row in timings.items():
        alone = (f"{row['check_ms']:.4f} | {row['check_all_median_ms']:.4f} / {row['check_all_max_ms']:.3f}"
                 if "check_ms" in row else "none | none")
        was = f" {old[fmt]['decode_ms']:.3f} |" if fmt in old else " n/a |"
        print(f"| {fmt} | {row['photo']} | {row['decode_ms']:.3f} | {alone} |" + (was if before else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tvhl", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "tvhl")
    ap.add_argument("--work", type=Path, required=True, help="temporary folder for encodings and damaged files")
    ap.add_argument("--limit", type=int, default=0, help="only the first N photographs (0: all)")
    ap.add_argument("--formats", default=",".join(FORMATS), help="comma-separated, of: " + ", ".join(FORMATS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the damaged files in --work")
    ap.add_argument("--save", type=Path, help="write the outcomes and timings as JSON")
    ap.add_argument("--before", type=Path, help="a --save file of a run on the code before the change")
    ap.add_argument("--timing-runs", type=int, default=300)
    ap.add_argument("--webp-margins", action="store_true")
    ap.add_argument("--margin-every", type=int, default=4)
    ap.add_argument("--margin-pictures", type=int, default=400)
    args = ap.parse_args()
    t_start = time.perf_counter()
    paths = sorted((args.tvhl / "fundus").glob("*.jpg"))
    if not paths:
        raise SystemExit(f"no photographs in {args.tvhl / 'fundus'}")
    if args.limit:
        paths = paths[: args.limit]
    formats = [f for f in args.formats.split(",") if f]
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise SystemExit(f"unknown format(s) {sorted(unknown)}: choose among {', '.join(FORMATS)}")
    cfg = PreprocessConfig()
    outcomes: dict[str, dict[str, dict[str, str]]] = {}
    refused_real: list[str] = []
    for i, p in enumerate(paths):
        other = paths[(i + 1) % len(paths)].read_bytes()
        for fmt in formats:
            rng = random.Random(f"{args.seed}:{p.name}:{fmt}")
            data = encoded(p, fmt, args.work)
            ext = FORMATS[fmt][0]
            result, detail = screen(data, f"{fmt}/{p.stem}{ext}", args.work, cfg, args.keep)
            outcomes.setdefault(fmt, {}).setdefault("photograph as it is", {})[p.stem] = result
            if result == "refused":
                refused_real.append(f"{p.name} as {fmt}: {detail}")
            for j, (kind, damaged) in enumerate(variants(data, fmt, other, rng).items()):
                result, _ = screen(damaged, f"{fmt}/{p.stem}_damaged{j}{ext}", args.work, cfg, args.keep)
                outcomes[fmt].setdefault(kind, {})[p.stem] = result
        if (i + 1) % 100 == 0:
            print(f"... {i + 1} of {len(paths)} photographs, {time.perf_counter() - t_start:.0f} s", flush=True)
    screening_s = time.perf_counter() - t_start
    timings = timing(paths, formats, args.work, args.timing_runs) if args.timing_runs else {}
    before: dict[str, Any] | None = json.loads(args.before.read_text()) if args.before else None

    print(f"\nPREPROCESS_VERSION {P.PREPROCESS_VERSION}; {len(paths)} TVHL photographs; OpenCV {cv2.__version__}")
    print_outcomes(formats, outcomes, refused_real, before)
    if timings:
        print_timings(timings, args.timing_runs, before)

    if args.webp_margins:
        print("\n## d. Zero bytes libwebp itself ends image data with, bits per 16x16 block (refused above 2)\n")
        print("| pictures | most |")
        print("|---|---|")
        for line in webp_margins(paths, args.margin_every, args.margin_pictures, args.seed):
            print(line)

    total = time.perf_counter() - t_start
    print(f"\nscreening {screening_s:.0f} s, total {total:.0f} s")
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps({"preprocess_version": P.PREPROCESS_VERSION, "outcomes": outcomes,
                                         "refused_real": refused_real, "timing": timings}, indent=1))


if __name__ == "__main__":
    main()
