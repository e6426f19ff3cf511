"""The score heatmap (features x timesteps, selected cells outlined): evidence of a mapping."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from governance.scoring.maths import FeatureChoice

HEATMAP_NAME = "score_heatmap.png"
MAX_HEATMAP_ROWS = 48


def heatmap_rows(scores: torch.Tensor, choices: list[FeatureChoice]) -> list[int]:
    """Selected features first (by best score), then the next best-scoring ones for context."""
    best = scores.max(dim=1).values
    selected = sorted({c.feature for c in choices}, key=lambda i: (-float(best[i]), i))[:MAX_HEATMAP_ROWS]
    rest = [i for i in torch.argsort(best, descending=True, stable=True).tolist() if i not in set(selected)]
    return selected + rest[: max(0, min(MAX_HEATMAP_ROWS, max(16, 2 * len(selected))) - len(selected))]


def render_heatmap(path: Path, scores: torch.Tensor, timesteps: list[int], choices: list[FeatureChoice],
                   title: str) -> None:
    """Features x timesteps score image; selected cells outlined. matplotlib if installed, else PIL."""
    rows = heatmap_rows(scores, choices)
    data = scores[rows].to(torch.float32).numpy()
    chosen = {(c.feature, c.timestep) for c in choices}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError:
        _render_heatmap_pil(path, data, rows, timesteps, chosen)
        return
    lim = float(abs(data).max()) or 1.0
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(timesteps) + 2), max(3, 0.18 * len(rows) + 1.5)))
    im = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    for r, f in enumerate(rows):
        for col, t in enumerate(timesteps):
            if (f, t) in chosen:
                ax.add_patch(Rectangle((col - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="black", lw=1.2))
    ax.set_yticks(range(len(rows)), [str(f) for f in rows], fontsize=6)
    step = max(1, len(timesteps) // 20)
    ax.set_xticks(range(0, len(timesteps), step), [str(t) for t in timesteps[::step]], fontsize=6, rotation=90)
    ax.set_xlabel("timestep")
    ax.set_ylabel("feature")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="score")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _render_heatmap_pil(path: Path, data: Any, rows: list[int], timesteps: list[int],
                        chosen: set[tuple[int, int]]) -> None:
    import numpy as np
    from PIL import Image

    cell = 8
    lim = float(np.abs(data).max()) or 1.0
    v = np.clip(data / lim, -1, 1)
    rgb = np.zeros(data.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = (255 * np.where(v > 0, 1, 1 + v)).astype(np.uint8)  # red for positive
    rgb[..., 2] = (255 * np.where(v < 0, 1, 1 - v)).astype(np.uint8)  # blue for negative
    rgb[..., 1] = (255 * (1 - np.abs(v))).astype(np.uint8)
    img = np.kron(rgb, np.ones((cell, cell, 1), dtype=np.uint8))
    for r, f in enumerate(rows):
        for col, t in enumerate(timesteps):
            if (f, t) in chosen:
                img[r * cell, col * cell:(col + 1) * cell] = 0
                img[(r + 1) * cell - 1, col * cell:(col + 1) * cell] = 0
                img[r * cell:(r + 1) * cell, col * cell] = 0
                img[r * cell:(r + 1) * cell, (col + 1) * cell - 1] = 0
    Image.fromarray(img).save(path)
