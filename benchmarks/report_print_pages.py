"""Print a screening report as a browser prints it, and render each page as a PNG to look at.

What a clinic prints is Chromium's (or another browser's) print layout of ``report.html``, with the running
header and footer the report's print CSS sets. The tests check the HTML; this shows the pages. Needs
``chromium`` on PATH and ``pip install pypdfium2`` (a review tool only: not a dependency of uopsl).

    python benchmarks/report_print_pages.py demo/screen/report.html --out /tmp/report_pages [--scale 1.4]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="folder for report.pdf and page-NN.png")
    ap.add_argument("--scale", type=float, default=1.4, help="pixels per PDF point (1.4: ~100 dpi)")
    args = ap.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("no chromium on PATH (apt-get install chromium)")
    try:
        import pypdfium2 as pdfium
    except ImportError:
        raise SystemExit("pip install pypdfium2 (renders the printed PDF's pages)") from None
    args.out.mkdir(parents=True, exist_ok=True)
    pdf_path = args.out / "report.pdf"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
                    f"--print-to-pdf={pdf_path}", args.report.resolve().as_uri()],
                   check=True, capture_output=True, timeout=300)
    pdf = pdfium.PdfDocument(str(pdf_path))
    for i in range(len(pdf)):
        pdf[i].render(scale=args.scale).to_pil().save(args.out / f"page-{i + 1:02d}.png")
    print(f"{len(pdf)} page(s): {pdf_path} and {args.out}/page-NN.png")


if __name__ == "__main__":
    main()
