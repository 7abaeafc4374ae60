"""The screening report of a bundle with a class added by its description (session 51 review).

It said every threshold was set on validation photographs, showed "0.500" for a class whose threshold was
"chosen on no data", and named a zero-shot class's finding like any other.
"""

from __future__ import annotations

import re
from dataclasses import replace

from test_report_readability import _manifest, _row
from uopsl.runtime.bundle import ClassSpec
from uopsl.runtime.report import render_report


def _bundle_with_rp():  # type: ignore[no-untyped-def]
    m = _manifest()
    rp = ClassSpec("rp", ("bone-spicule pigment",), threshold=0.12, referable=True, seen_in_training=False)
    stargardt = ClassSpec("stargardt", ("pisciform flecks",), threshold=0.5, referable=False, seen_in_training=False)
    points = [{"name": "dr", "threshold": 0.879, "method": "target_sensitivity", "target_sensitivity": 0.9,
               "n_positive": 31, "n_negative": 69, "source": "checkpoint validation data"},
              {"name": "rp", "threshold": 0.12, "source": "class file rp.toml"},
              {"name": "stargardt", "threshold": 0.5, "source": "chosen on no data (a default, not an operating point)"}]
    return replace(m, classes=(*m.classes, rp, stargardt), notes={"operating_points": points})


def test_the_legend_says_which_thresholds_were_not_set_on_validation_photographs() -> None:
    page = render_report([], "/nonexistent", _bundle_with_rp())
    notes = re.findall(r"not set on validation photographs: ([^<]*)", page)
    assert notes == ["class file rp.toml", "chosen on no data (a default, not an operating point)"]
    assert "set on validation photographs unless the table below says otherwise" in page
    assert "Each threshold was set for its class on validation photographs" not in page


def test_a_zero_shot_finding_carries_its_star_where_the_referral_is_stated() -> None:
    row = _row("a.jpg", refer=True, probs={"normal": 0.2, "dr": 0.1, "amd": 0.001, "glaucoma": 0.001, "rp": 0.3,
                                           "stargardt": 0.1}, positive=["normal", "rp"])
    page = render_report([row], "/nonexistent", _bundle_with_rp())
    found = re.search(r"Found: (.*?)</div>", page)
    assert found and found.group(1).endswith("*"), page
    assert "* zero-shot (no training images, scores not validated): rp, stargardt" in page
