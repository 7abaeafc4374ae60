"""Which colour map the heatmap overlays use: each candidate's lightness, and hot against cold in grey.

Usage: python benchmarks/colormap_grey_contrast.py [--photos DIR] [--n 40] [--samples OUT_DIR]

Why: clinics print report.html in black and white, so a heatmap must read the same way in grey: hot lighter
than cold, lightness rising steadily with heat, and the hot end standing out from a red-orange retina in colour
and in grey. For each candidate (OpenCV's jet, which overlays used until session 56; viridis, inferno, magma and
cividis whole; and the light half of each, from its first entry as light as mid-grey), it writes:

1. the map itself: CIE L* at both ends, its smallest step between neighbouring entries (negative: lightness
   goes back) and the same for Rec.601 luma (what OpenCV's and most printers' conversion to grey use);
2. a heat ramp 0..1 blended over a mid-grey (128) image as the overlays blend: the grey at the peak, how far the
   grey falls below the background anywhere (a dark ring round a hot spot) and the largest fall along the ramp;
3. real photographs (``--photos``, resized to the overlays' 384 px), a Gaussian hot spot at the centre of the
   field of view (the macula of a macula-centred photograph) and one on the brightest place (the optic disc):
   in grey, the mean of the hot core (heat >= 0.8) minus that of a cold ring round it (0.05 <= heat <= 0.2),
   less the same difference on the photograph alone (so it is what the overlay adds), and the share of
   photographs where the hot core is lighter than the cold ring; in colour, CIE a*b* distance of the hot core
   from the same pixels of the photograph (lightness left out: colour alone); how much the overlay darkens the
   photograph away from the spot (heat < 0.05), and the darkest ring (0.2 <= heat <= 0.5) against the photograph;
4. with ``--samples``, PNGs of the first photographs under each candidate, in colour and in grey, to look at.

The blend is runtime/overlay.py's: weight ``0.45 * heat / peak``. One candidate ("viridis whole, uniform")
blends with a constant weight of 0.45 instead, to show what a map with a dark low end does to a photograph
when blended uniformly. Where ``uopsl.runtime.overlay`` has ``HEAT_RGB``, the shipped colours are a row too,
checked to give the pixels of ``render_overlay``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ALPHA = 0.45
SIDE = 384  # runtime/api.py OVERLAY_SIDE
MID_GREY = 128
BRIGHT = 80  # a retina whose median grey is at least this is a bright, orange-red photograph
LUMA_601 = np.array([0.299, 0.587, 0.114])
LUMA_709 = np.array([0.2126, 0.7152, 0.0722])


def opencv_map(code: int) -> np.ndarray:
    """OpenCV's 256-entry colour map ``code`` as RGB uint8, shape (256, 3)."""
    return cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), code)[:, 0, ::-1].copy()


def light_part(lut: np.ndarray) -> np.ndarray:
    """The map from its first entry as light as mid-grey (Rec.601 and Rec.709 luma) up, over 256 entries."""
    luma = np.minimum(lut @ LUMA_601, lut @ LUMA_709)
    start = int(np.argmax(luma >= MID_GREY))
    return lut[np.rint(np.linspace(start, 255, 256)).astype(np.intp)]


def lstar(rgb: np.ndarray) -> np.ndarray:
    """CIE L* (D65) of sRGB uint8 colours (..., 3)."""
    c = rgb.astype(np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = lin @ LUMA_709
    f = np.where(y > 216 / 24389, np.cbrt(y), (24389 / 27 * y + 16) / 116)
    return 116 * f - 16


def grey(rgb: np.ndarray) -> np.ndarray:
    """What a black-and-white print shows: OpenCV's RGB to grey (Rec.601 luma), as float."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float64)


def lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (L 0-100, a*, b*) of RGB uint8 pixels."""
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab).astype(np.float64)


def blend(rgb: np.ndarray, heat: np.ndarray, lut: np.ndarray, uniform: bool = False) -> np.ndarray:
    """runtime/overlay.py's blend with colours ``lut``: ``rgb * (1 - w) + colour * w``, ``w = 0.45 * heat / peak``
    (``uniform``: ``w = 0.45`` everywhere), rounded half up, in float32."""
    norm = heat / float(heat.max())
    u8 = np.clip(norm * 255.0 + 0.5, 0, 255).astype(np.uint8)
    w = (np.full_like(norm, ALPHA) if uniform else ALPHA * norm)[:, :, None].astype(np.float32)
    out = rgb.astype(np.float32) * (1.0 - w) + lut[u8].astype(np.float32) * w + 0.5
    return np.clip(out, 0, 255).astype(np.uint8)


def candidates() -> dict[str, tuple[np.ndarray, bool]]:
    """name -> (RGB LUT, uniform weight)."""
    out: dict[str, tuple[np.ndarray, bool]] = {"jet (until session 56)": (opencv_map(cv2.COLORMAP_JET), False)}
    for name in ("viridis", "inferno", "magma", "cividis"):
        lut = opencv_map(getattr(cv2, f"COLORMAP_{name.upper()}"))
        out[f"{name} whole"] = (lut, False)
        out[f"{name} light part"] = (light_part(lut), False)
    out["viridis whole, uniform"] = (opencv_map(cv2.COLORMAP_VIRIDIS), True)
    try:
        from uopsl.runtime.overlay import HEAT_RGB
    except ImportError:
        return out
    out["shipped (overlay.HEAT_RGB)"] = (np.asarray(HEAT_RGB), False)
    return out


def fov_mask(rgb: np.ndarray) -> np.ndarray:
    """The field of view: the largest region brighter than the black surround, filled (a dark macula is inside it),
    eroded away from its edge."""
    bright = (cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) > 15).astype(np.uint8)
    contours, _ = cv2.findContours(bright, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    mask = np.zeros_like(bright)
    if not contours:  # a photograph darker than the threshold everywhere: no field of view found
        return mask.astype(bool)
    cv2.drawContours(mask, [cv2.convexHull(max(contours, key=cv2.contourArea))], -1, 1, cv2.FILLED)
    return cv2.erode(mask, np.ones((9, 9), np.uint8)).astype(bool)


def spots(rgb: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Gaussian heat maps: one at the centre of the field of view, one on its brightest place (the disc)."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    radius = np.sqrt(mask.sum() / np.pi)
    sigma = 0.12 * radius
    blurred = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), sigma / 2)
    inner = cv2.erode(mask.astype(np.uint8), np.ones((int(0.3 * radius),) * 2, np.uint8)).astype(bool)
    blurred[~inner] = -1  # not the rim, where a dark photograph's brightest place is a flare
    by, bx = np.unravel_index(int(np.argmax(blurred)), blurred.shape)
    yy, xx = np.mgrid[0:h, 0:w]

    def gauss(cy: float, cx: float) -> np.ndarray:
        return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)).astype(np.float32)

    return {"centre": gauss(ys.mean(), xs.mean()), "disc": gauss(by, bx)}


def spot_figures(rgb: np.ndarray, mask: np.ndarray, heat: np.ndarray, over: np.ndarray) -> dict[str, float]:
    """The figures of one hot spot on one photograph (see the module docstring, item 3)."""
    n = heat / heat.max()
    hot, cold = mask & (n >= 0.8), mask & (n >= 0.05) & (n <= 0.2)
    ring, away = mask & (n >= 0.2) & (n <= 0.5), mask & (n < 0.05)
    g, g0 = grey(over), grey(rgb)
    lab1, lab0 = lab(over), lab(rgb)
    return {
        "added": (g[hot].mean() - g[cold].mean()) - (g0[hot].mean() - g0[cold].mean()),
        "hot_lighter": float(g[hot].mean() > g[cold].mean()),
        "ab": float(np.hypot(*(lab1[hot][:, 1:].mean(0) - lab0[hot][:, 1:].mean(0)))),
        "away": float((g[away] - g0[away]).mean()),
        "ring": float((g[ring] - g0[ring]).mean()),
    }


def lut_line(name: str, lut: np.ndarray) -> str:
    ls, luma = lstar(lut), lut.astype(np.float64) @ LUMA_601
    return (f"| {name} | {ls[0]:.1f} | {ls[-1]:.1f} | {np.diff(ls).min():+.3f} | {luma[0]:.0f} | {luma[-1]:.0f} | "
            f"{np.diff(luma).min():+.2f} |")


def ramp_line(name: str, lut: np.ndarray, uniform: bool) -> str:
    heat = np.tile(np.linspace(0, 1, 256, dtype=np.float32), (4, 1))
    g = grey(blend(np.full((4, 256, 3), MID_GREY, np.uint8), heat, lut, uniform))[0]
    fall = float((np.maximum.accumulate(g) - g).max())
    return f"| {name} | {g[-1]:.0f} | {MID_GREY - g.min():.0f} | {fall:.0f} |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/tvhl/fundus")
    ap.add_argument("--n", type=int, default=40, help="photographs (every k-th of the sorted folder)")
    ap.add_argument("--samples", type=Path, help="folder for sample PNGs (colour and grey) of the --show photographs")
    ap.add_argument("--show", nargs="*", default=["0002_OD_f_1.jpg", "0676_OI_f_1.jpg", "0748_OD_f_1.jpg"],
                    help="photographs (names in --photos) drawn into --samples: one dark, two bright orange")
    args = ap.parse_args(argv)
    cands = candidates()
    write: Callable[[str], object] = sys.stdout.write
    write("## 1. The maps (256 entries; luma: Rec.601)\n\n| map | L* low | L* high | smallest L* step | luma low | luma high | "
          "smallest luma step |\n|---|---|---|---|---|---|---|\n")
    for name, (lut, uniform) in cands.items():
        if not uniform:
            write(lut_line(name, lut) + "\n")
    write(f"\n## 2. A heat ramp 0..1 over mid-grey ({MID_GREY}), grey (Rec.601) of the overlay\n\n"
          "| map | grey at peak | deepest below background | largest fall along the ramp |\n|---|---|---|---|\n")
    for name, (lut, uniform) in cands.items():
        write(ramp_line(name, lut, uniform) + "\n")

    files = sorted(args.photos.glob("*.jpg"))
    if not files:
        write(f"\nno photographs in {args.photos}: parts 3 and 4 skipped\n")
        return 0
    files = files[:: max(1, len(files) // args.n)][: args.n]
    shown = [args.photos / name for name in (args.show if args.samples is not None else [])]
    figures: dict[tuple[str, str], list[dict[str, float]]] = {}
    bright: list[bool] = []
    retina: list[float] = []
    shipped_checked = 0
    for k, f in enumerate(files + [p for p in shown if p not in files]):
        measured = f in files
        bgr = cv2.imread(str(f))
        scale = SIDE / max(bgr.shape[:2])
        rgb = cv2.cvtColor(cv2.resize(bgr, (round(bgr.shape[1] * scale), round(bgr.shape[0] * scale)),
                                      interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        mask = fov_mask(rgb)
        if mask.sum() < 0.1 * mask.size:
            write(f"skipped {f.name}: no field of view found\n")
            continue
        if measured:
            retina.append(float(np.percentile(grey(rgb)[mask], 90)))
            bright.append(float(np.median(grey(rgb)[mask])) >= BRIGHT)
        maps = spots(rgb, mask)
        panels = []
        for name, (lut, uniform) in cands.items():
            row = []
            for where, heat in maps.items():
                over = blend(rgb, heat, lut, uniform)
                if name.startswith("shipped") and measured:
                    from uopsl.runtime.overlay import render_overlay

                    assert np.array_equal(over, render_overlay(rgb, heat)), "the script's blend is not the shipped one"
                    shipped_checked += 1
                if measured:
                    figures.setdefault((name, where), []).append(spot_figures(rgb, mask, heat, over))
                row += [over, cv2.cvtColor(cv2.cvtColor(over, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)]
            strip = np.concatenate(row, axis=1)
            cv2.putText(strip, name, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 2, cv2.LINE_AA)
            panels.append(strip)
        if f in shown and args.samples is not None:
            args.samples.mkdir(parents=True, exist_ok=True)
            small = [cv2.resize(p, (p.shape[1] // 2, p.shape[0] // 2), interpolation=cv2.INTER_AREA) for p in panels]
            cv2.imwrite(str(args.samples / f"{f.stem}_maps.png"),
                        cv2.cvtColor(np.concatenate(small), cv2.COLOR_RGB2BGR))
    write(f"\n## 3. {len(retina)} photographs of {args.photos} at {SIDE} px; retina's 90th grey percentile: median "
          f"{np.median(retina):.0f}, highest {max(retina):.0f}\n\nMedians over the photographs. added: grey of hot "
          "core minus cold ring, less the photograph's own; hot lighter: share of photographs; a*b*: colour "
          "distance of the hot core from the photograph; away: grey change where heat < 0.05; ring: grey change "
          "where 0.2 <= heat <= 0.5. ")
    write(f"Each cell: all photographs / the {sum(bright)} bright ones (median grey of the retina >= {BRIGHT}, "
          "orange-red).\n\n| map | spot | added | hot lighter | a*b* | away | ring |\n|---|---|---|---|---|---|---|\n")
    for (name, where), rows in figures.items():
        cells = []
        for key, fmt in (("added", "+.1f"), ("hot_lighter", ".0%"), ("ab", ".1f"), ("away", "+.1f"), ("ring", "+.1f")):
            everyone = [r[key] for r in rows]
            lit = [r[key] for r, b in zip(rows, bright) if b]
            pick = np.mean if key == "hot_lighter" else np.median
            cells.append(f"{pick(everyone):{fmt}} / {pick(lit):{fmt}}" if lit else f"{pick(everyone):{fmt}}")
        write(f"| {name} | {where} | " + " | ".join(cells) + " |\n")
    if shipped_checked:
        write(f"\nshipped colours: the script's blend equals render_overlay on all {shipped_checked} overlays\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
