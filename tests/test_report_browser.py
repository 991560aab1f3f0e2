"""report.html as a reader sees it (issue 22): per reported nodule an overview axial slice with
the nodule circled and labelled, its three crops, its measurements, type and research-only
category; the patient's nodules in a table.  Checked in a real browser (headless Chromium's
screenshot, the images found in it by their pixels) and by html5lib's strict parser.

Chromium (Debian package ``chromium``) and html5lib (the ``test`` extra) missing: these tests skip
with the reason, and fail instead under ``CI=true``."""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from lungcad.results.crops import render_crops
from lungcad.results.folder import OutputDir
from reported_results import add_reported_to_json, chest, reported_result

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1")
WINDOW = (1280, 3600)


def missing(what: str) -> None:
    """Skip (or, under CI=true, fail) for a tool or package that is not installed."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI=true: required)")
    pytest.skip(what)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """An output folder of two patients: P22 with two reported nodules (and a third candidate
    below the threshold), P23 with none reported."""
    root = tmp_path_factory.mktemp("report")
    out = OutputDir(root)
    sids = {}
    for pid, uid, n, spacing in (("P22", "1.2.826.0.1.22", 2, (2.0, 0.8, 0.9)),
                                 ("P23", "1.2.826.0.1.23", 0, (2.5, 0.7, 0.7))):
        vol = chest(patient_id=pid, series_uid=uid, spacing=spacing)
        r = reported_result(vol, n_reported=n)
        crops = render_crops(vol, r.candidates, top_n=3, overview=True)
        sids[pid] = sid = out.write_scan(r, crops=crops)
        add_reported_to_json(out.scan_path(sid), r)
    out.finalize()
    return root, sids


def test_the_report_parses_under_html5libs_strict_parser(report):
    try:
        import html5lib
    except ImportError:
        missing("html5lib is not installed (pip install -e '.[test]')")
    root, _ = report
    html5lib.HTMLParser(strict=True).parse((root / "report.html").read_text(encoding="utf-8"))


def test_the_report_shows_each_reported_nodule_with_its_measurements_and_images(report):
    root, sids = report
    html = (root / "report.html").read_text(encoding="utf-8")
    p22 = html[html.index('id="patient-0"'):html.index('id="patient-1"')]
    p23 = html[html.index('id="patient-1"'):]
    for i in (0, 1):
        for view in ("overview", "axial", "coronal", "sagittal"):
            assert f'src="crops/{sids["P22"]}/{i}_{view}.png"' in p22
    assert "Nodule 1" in p22 and "Nodule 2" in p22 and "Nodule 3" not in p22 and "0.22" not in p22
    for text in ("Long axis (mm)", "Short axis (mm)", "Mean axis (mm)", "Volume (mm&sup3;)", "Type",
                 "Solid component (mm)", "Category (research only)", "part-solid", "4A", "12.6", "11.6", "12.1"):
        assert text in p22, text
    assert "research only, not a clinical reading" in html[:html.index("<h2>Summary")]
    assert "category of the scan: <b>4A</b>" in p22
    # a scan that reports nothing shows its top candidates, and no measurement of them
    assert "No nodule reported" in p23 and "Candidate 3" in p23 and "Long axis" not in p23
    summary = html[html.index("<h2>Summary"):html.index('id="patient-0"')]
    assert "<th>Reported nodules</th>" in summary and re.search(r'<td class="num">2</td><td>4A</td>', summary)


def _gray(png) -> np.ndarray:
    import matplotlib.image as mpimg

    a = mpimg.imread(io.BytesIO(png) if isinstance(png, bytes) else png, format="png")
    return (a[..., :3].mean(axis=2) * 255.0).astype(np.float64)


def _pool(a: np.ndarray, k: int) -> np.ndarray:
    h, w = (a.shape[0] // k) * k, (a.shape[1] // k) * k
    return a[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))


class Screen:
    """A screenshot (gray, 0-255) in which images are looked for by their pixels: first on a
    4x coarser grid (sums of squared differences at every offset, by FFT), then exactly, pixel
    for pixel, around the best coarse offset."""

    K = 4

    def __init__(self, gray: np.ndarray):
        self.a = gray
        self.coarse = _pool(gray, self.K)
        self.sq = np.pad(np.cumsum(np.cumsum(self.coarse ** 2, 0), 1), ((1, 0), (1, 0)))

    def locate(self, tmpl: np.ndarray) -> tuple[tuple[int, int], float]:
        """Where ``tmpl`` lies (top-left (row, col)) and the mean squared difference there."""
        from scipy.signal import fftconvolve

        k, t = self.K, _pool(tmpl, self.K)
        h, w = t.shape
        c = self.sq
        window = c[h:, w:] - c[:-h, w:] - c[h:, :-w] + c[:-h, :-w]
        ssd = window - 2 * fftconvolve(self.coarse, t[::-1, ::-1], mode="valid") + (t ** 2).sum()
        r0, c0 = np.unravel_index(int(np.argmin(ssd)), ssd.shape)
        best = ((0, 0), np.inf)
        th, tw = tmpl.shape
        for r in range(max(0, r0 * k - k), min(self.a.shape[0] - th, r0 * k + k) + 1):
            for col in range(max(0, c0 * k - k), min(self.a.shape[1] - tw, c0 * k + k) + 1):
                msd = float(np.mean((self.a[r:r + th, col:col + tw] - tmpl) ** 2))
                if msd < best[1]:
                    best = ((r, col), msd)
        return best


def test_chromium_renders_the_report_with_its_overviews_and_crops(report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        missing("chromium is not installed (apt-get install -y chromium)")
    root, sids = report
    shot = tmp_path / "report.png"
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
           f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}", (root / "report.html").as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    gray = _gray(shot.read_bytes())
    assert gray.shape == (WINDOW[1], WINDOW[0])
    assert gray.std() > 20 and (gray < 128).mean() > 0.05              # not blank: text and images
    screen = Screen(gray)
    seen = {}
    for pid, names in (("P22", [f"{i}_{v}" for i in (0, 1) for v in ("overview", "axial", "coronal", "sagittal")]),
                       ("P23", ["0_overview", "0_axial"])):
        for name in names:
            tmpl = _gray((root / "crops" / sids[pid] / f"{name}.png").read_bytes())
            where, msd = screen.locate(tmpl)
            assert msd < 30.0, f"{pid} {name}: not found in the screenshot (mean squared difference {msd:.0f})"
            seen[(pid, name)] = where
    assert len(set(seen.values())) == len(seen)                         # each image in its own place
    # the overview of a nodule stands left of its axial crop, on the same row
    (r0, c0), (r1, c1) = seen[("P22", "0_overview")], seen[("P22", "0_axial")]
    assert c0 < c1 and r0 <= r1 <= r0 + 384
