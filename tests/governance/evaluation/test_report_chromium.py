"""The HTML report, loaded in headless Chromium: every embedded image decodes, and a screenshot
(kept in the test's tmp_path) shows them. Skipped only when no Chromium binary is installed
(.ci/run installs the Debian `chromium` package)."""
from __future__ import annotations

import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from governance.evaluation.report import grid, write_report

WIDTH, HEIGHT = 1200, 2000
TIMEOUT_S = 90
RED, BLUE, GREEN, ORANGE = (220, 20, 30), (20, 40, 220), (10, 200, 40), (250, 150, 0)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")


def _run_chromium(binary: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--no-default-browser-check", "--disable-extensions",
           "--hide-scrollbars", "--force-device-scale-factor=1", f"--user-data-dir={profile}", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"chromium did not finish within {TIMEOUT_S} s: {exc}")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def _tile(colour: tuple[int, int, int], mark: tuple[int, int, int]) -> np.ndarray:
    img = np.empty((16, 16, 3), dtype=np.uint8)
    img[:] = colour
    img[6:10, 6:10] = mark  # a small square, so a tile is not a flat colour
    return img


def _heatmap_png() -> bytes:
    ramp = np.linspace(0, 1, 240)[None, :, None]
    img = (ramp * np.array(GREEN) + (1 - ramp) * np.array(ORANGE)).astype(np.uint8)
    img = np.repeat(img, 60, axis=0)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _make_report(path: Path) -> tuple[Path, int]:
    metrics = {
        "red": {"kind": "colour", "UA": 0.95, "IRA": 0.9, "CRA": 0.85,
                "CRA_by_kind": {"shape": 0.9, "style": 0.8}, "n_target_images": 4, "misses": []},
        "watercolor": {"kind": "style", "UA": 0.7, "IRA": 0.88, "CRA": None,
                       "CRA_by_kind": {}, "n_target_images": 4, "misses": [{"prompt": "a red circle", "seed": 0}]},
    }
    grids = [
        ("prompts with 'red'", grid([_tile(RED, (255, 255, 255))] * 4, 2), grid([_tile(BLUE, (0, 0, 0))] * 4, 2)),
        ("prompts with 'watercolor'", grid([_tile(ORANGE, (0, 0, 0))] * 4, 2),
         grid([_tile(GREEN, (255, 255, 255))] * 4, 2)),
    ]
    heatmaps = [("mapping 1: red", _heatmap_png())]
    audit = [{"seq": i, "created_at": f"2024-01-0{i + 1}T00:00:00Z", "actor": "alice <a&b>",
              "action": "mapping.approve", "subject": f"mapping:{i}", "hash": f"{i:064x}"} for i in range(3)]
    facts = {"deployment": "/tmp/dep", "blocklist": "demo@1", "images per pass": 8}
    write_report(path, title="saegov report <test>", metrics=metrics, grids=grids,
                 heatmaps=heatmaps, audit=audit, facts=facts)
    return path, 2 * len(grids) + len(heatmaps)


class _BodyAttrs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body" and self.attrs is None:
            self.attrs = dict(attrs)


def _body_attrs(binary: str, tmp: Path, report: Path) -> dict[str, str | None]:
    dom = _run_chromium(binary, tmp, "--dump-dom", "--virtual-time-budget=5000", report.as_uri()).stdout
    parser = _BodyAttrs()
    parser.feed(dom)
    assert parser.attrs is not None, f"no <body> in the dumped DOM:\n{dom[:2000]}"
    return parser.attrs


def _has_colour(pixels: np.ndarray, colour: tuple[int, int, int], min_pixels: int, tol: int = 12) -> bool:
    close = np.all(np.abs(pixels.astype(int) - np.array(colour)) <= tol, axis=-1)
    return int(close.sum()) >= min_pixels


def test_report_images_render_in_chromium(tmp_path: Path) -> None:
    binary = _chromium()
    report, n_images = _make_report(tmp_path / "report.html")

    attrs = _body_attrs(binary, tmp_path, report)
    assert attrs.get("data-images-total") == str(n_images)
    assert attrs.get("data-images-rendered") == str(n_images), attrs

    shot = tmp_path / "report.png"
    _run_chromium(binary, tmp_path, f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", report.as_uri())
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(shot) as img:
        img.verify()
    with Image.open(shot) as img:
        assert img.size == (WIDTH, HEIGHT)
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 10, "screenshot is (nearly) a single colour"
    # Each grid is 4 tiles of 16x16 drawn at 4x: thousands of pixels of each synthetic colour.
    for name, colour in {"red": RED, "blue": BLUE, "orange": ORANGE, "green": GREEN}.items():
        assert _has_colour(pixels, colour, 2000), f"no {name} {colour} in the screenshot {shot}"


def test_render_check_counts_a_broken_image(tmp_path: Path) -> None:
    """The load-time probe is not vacuous: one undecodable image gives rendered = total - 1."""
    binary = _chromium()
    report, n_images = _make_report(tmp_path / "report.html")
    text = report.read_text(encoding="utf-8")
    start = text.index("data:image/png;base64,") + len("data:image/png;base64,")
    report.write_text(text[:start] + "AAAA" + text[start + 4:], encoding="utf-8")  # break the PNG signature

    attrs = _body_attrs(binary, tmp_path, report)
    assert attrs.get("data-images-total") == str(n_images)
    assert attrs.get("data-images-rendered") == str(n_images - 1), attrs
