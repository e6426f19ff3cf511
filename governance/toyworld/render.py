"""Renders toy-world images: one coloured shape on a neutral background style."""
from __future__ import annotations

import numpy as np

from governance.toyworld.grammar import COLOURS, SHAPES, STYLES

IMAGE_SIZE = 32

# Saturated shape colours on a neutral (grey) background keep colour separable from style.
RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 50),
    "blue": (40, 70, 220),
    "yellow": (225, 205, 30),
}
# The neutral values an omitted attribute renders as (see grammar.py): dark enough to tell
# from the dark background rows (110) and unsaturated, so no colour classifier claims it.
NEUTRAL_RGB = (35, 35, 35)
NEUTRAL_SHAPE = "diamond"
BG_BLANK = 245  # the neutral background, brighter than plain
BG_LIGHT = 205
BG_DARK = 110
STRIPE_PERIOD = 8  # pixels; 4 dark rows then 4 light rows
DOT_PERIOD = 8
DOT_SIZE = 3


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean [size, size] mask of a shape of 'radius' r centred at (cx, cy)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        h = 0.85 * r
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":
        top, bottom = -r, 0.8 * r
        frac = (dy - top) / (bottom - top)  # 0 at apex, 1 at base
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= frac * r)
    if shape == "cross":
        w = 0.33 * r
        return ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    if shape == NEUTRAL_SHAPE:
        return np.abs(dx) + np.abs(dy) <= 1.1 * r
    raise ValueError(f"unknown shape {shape!r}")


def background(style: str | None, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """Grey-level [size, size] background for a style (None: blank), with a random phase."""
    if style is None:
        return np.full((size, size), BG_BLANK, dtype=np.float32)
    img = np.full((size, size), BG_LIGHT, dtype=np.float32)
    ys, xs = np.mgrid[0:size, 0:size]
    if style == "plain":
        return img
    if style == "striped":
        phase = int(rng.integers(STRIPE_PERIOD))
        img[((ys + phase) % STRIPE_PERIOD) < STRIPE_PERIOD // 2] = BG_DARK
        return img
    if style == "dotted":
        py, px = (int(v) for v in rng.integers(DOT_PERIOD, size=2))
        img[(((ys + py) % DOT_PERIOD) < DOT_SIZE) & (((xs + px) % DOT_PERIOD) < DOT_SIZE)] = BG_DARK
        return img
    raise ValueError(f"unknown style {style!r}")


def render(
    colour: str | None, shape: str | None, style: str | None, rng: np.random.Generator, size: int = IMAGE_SIZE
) -> np.ndarray:
    """uint8 [size, size, 3] image; size and position are jittered by rng. None: the neutral value."""
    if colour is not None and colour not in RGB:
        raise ValueError(f"unknown colour {colour!r}")
    r = float(rng.uniform(0.24, 0.33) * size)
    jitter = 0.09 * size
    cx = size / 2 + float(rng.uniform(-jitter, jitter))
    cy = size / 2 + float(rng.uniform(-jitter, jitter))
    grey = background(style, rng, size)
    img = np.repeat(grey[:, :, None], 3, axis=2)
    img[shape_mask(shape or NEUTRAL_SHAPE, cx, cy, r, size)] = RGB[colour] if colour else NEUTRAL_RGB
    return img.astype(np.uint8)


def random_concepts(rng: np.random.Generator) -> tuple[str, str, str]:
    return (
        COLOURS[int(rng.integers(len(COLOURS)))],
        SHAPES[int(rng.integers(len(SHAPES)))],
        STYLES[int(rng.integers(len(STYLES)))],
    )
