"""Exact, deterministic classifiers for the toy world's colour, shape and style.

No training: colour is the nearest reference RGB of the saturated pixels, shape the best
IoU against each shape's template fitted to the object pixels' bounding box (one connected object
fitting a template with IoU >= 0.65, else no shape), style a rule on
the grey background's row/column structure. The neutral values of omitted attributes (an
uncoloured object, the diamond, the blank background) are recognised and reported as None, so
"not the concept" is never counted as some other concept by accident.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from governance.toyworld.grammar import SHAPES
from governance.toyworld.render import BG_BLANK, BG_DARK, BG_LIGHT, NEUTRAL_SHAPE, RGB, shape_mask

SATURATION_MIN = 60  # max(rgb) - min(rgb) above which a pixel belongs to the shape
DARK_MAX = 70  # max(rgb) below which a pixel belongs to an uncoloured object (dark rows are 110)
# What it takes to be an object of some shape at all. The best template's IoU alone let debris
# (the fragments an edit leaves of a removed colour) pass as a shape at IoU 0.4-0.6, so that a
# wrecked object was counted as kept about as often as chance. On the trained model's clean
# images (128 evaluation and style-free images, seeds 0 and 1) the best IoU is at least 0.73
# and the largest connected part holds every object pixel; on the demo's wrecked red objects,
# 0.0-0.85 and 17-100 %.
SHAPE_MIN_IOU = 0.65
SHAPE_MIN_CONNECTED = 0.9


@dataclass(frozen=True)
class Prediction:
    colour: str | None
    shape: str | None
    style: str | None


def _as_array(image: object) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise ValueError(f"expected an RGB image, got shape {arr.shape}")
    return arr[:, :, :3].astype(np.float32)


def saturated_mask(arr: np.ndarray) -> np.ndarray:
    return (arr.max(axis=2) - arr.min(axis=2)) > SATURATION_MIN


def dark_mask(arr: np.ndarray) -> np.ndarray:
    return arr.max(axis=2) < DARK_MAX


def object_mask(arr: np.ndarray) -> np.ndarray:
    """Pixels of the object, coloured or uncoloured."""
    return saturated_mask(arr) | dark_mask(arr)


def classify_colour(image: object) -> str | None:
    """The object's colour; None for an uncoloured object (or none at all)."""
    arr = _as_array(image)
    mask = saturated_mask(arr)
    if mask.sum() < 4 or mask.sum() < dark_mask(arr).sum():
        return None
    mean = arr[mask].mean(axis=0)
    return min(RGB, key=lambda c: float(np.sum((mean - np.array(RGB[c], dtype=np.float32)) ** 2)))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """4-connected largest component, so stray saturated pixels do not stretch the bbox."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    best, best_size, current = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        current += 1
        stack, size = [(y0, x0)], 0
        labels[y0, x0] = current
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best if best else mask


def _template_params(shape: str, x0: float, x1: float, y0: float, y1: float) -> tuple[float, float, float]:
    """(cx, cy, r) such that the shape's template fills the bounding box [x0, x1) x [y0, y1)."""
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    if shape == "circle":
        return cx, (y0 + y1) / 2, (w + h) / 4
    if shape == "square":
        return cx, (y0 + y1) / 2, (w + h) / 4 / 0.85
    if shape == "triangle":
        r = (w / 2 + h / 1.8) / 2
        return cx, y0 + r, r
    if shape == "cross":
        return cx, (y0 + y1) / 2, (w + h) / 4
    if shape == NEUTRAL_SHAPE:
        return cx, (y0 + y1) / 2, (w + h) / 4 / 1.1
    raise ValueError(shape)


def shape_scores(image: object, component: np.ndarray | None = None) -> dict[str, float]:
    """IoU of the object mask with each shape's (and the neutral diamond's) best-fitting template.
    `component`: the object mask's largest component, when the caller has it already."""
    candidates = (*SHAPES, NEUTRAL_SHAPE)
    mask = component if component is not None else _largest_component(object_mask(_as_array(image)))
    if mask.sum() < 4:
        return {s: 0.0 for s in candidates}
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    scores: dict[str, float] = {}
    for shape in candidates:
        cx, cy, r = _template_params(shape, float(x0), float(x1), float(y0), float(y1))
        best = 0.0
        for dr in (-0.5, 0.0, 0.5):
            tpl = shape_mask(shape, cx, cy, r + dr, mask.shape[0])
            inter = np.logical_and(tpl, mask).sum()
            union = np.logical_or(tpl, mask).sum()
            best = max(best, float(inter) / float(max(union, 1)))
        scores[shape] = best
    return scores


def classify_shape(image: object) -> str | None:
    """The object's shape; None for the neutral diamond, or when there is no one object whose
    outline fits a template (debris, fragments)."""
    mask = object_mask(_as_array(image))
    component = _largest_component(mask)
    if component.sum() < SHAPE_MIN_CONNECTED * mask.sum():
        return None
    scores = shape_scores(image, component)
    best = max(scores, key=lambda s: scores[s])
    return best if scores[best] >= SHAPE_MIN_IOU and best != NEUTRAL_SHAPE else None


def classify_style(image: object) -> str | None:
    """plain / striped / dotted from the background (object pixels and their rim excluded);
    None for the blank (neutral) background."""
    arr = _as_array(image)
    shape = object_mask(arr)
    # A 2-pixel rim: the blurred edge of an uncoloured object is darker than the light
    # background and must not read as dots.
    rim = shape.copy()
    for _ in range(2):
        grown = rim.copy()
        grown[1:] |= rim[:-1]
        grown[:-1] |= rim[1:]
        grown[:, 1:] |= rim[:, :-1]
        grown[:, :-1] |= rim[:, 1:]
        rim = grown
    grey = arr.mean(axis=2)
    dark = (grey < (BG_LIGHT + BG_DARK) / 2) & ~rim
    bg = ~rim
    dark_frac = dark.sum() / max(bg.sum(), 1)
    if dark_frac < 0.06:
        light = grey[bg]
        blank = light.size > 0 and float(np.median(light)) > (BG_BLANK + BG_LIGHT) / 2
        return None if blank else "plain"
    # Stripes: dark pixels fill whole rows; dots leave most of a dark row light.
    rows = [(dark[y] & bg[y]).sum() / max(bg[y].sum(), 1) for y in range(arr.shape[0]) if bg[y].sum() >= 4]
    rows_arr = np.array(rows)
    dark_rows = rows_arr[rows_arr > 0.15]
    if dark_rows.size == 0:
        return "plain"
    return "striped" if float(np.median(dark_rows)) > 0.7 else "dotted"


def classify(image: object) -> Prediction:
    return Prediction(classify_colour(image), classify_shape(image), classify_style(image))
