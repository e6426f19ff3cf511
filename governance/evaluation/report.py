"""A self-contained HTML report: metrics, before/after grids, score heatmaps, audit trail."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np


def png_data_uri(image: np.ndarray | bytes, scale: int = 4) -> str:
    if isinstance(image, bytes):
        data = image
    else:
        from PIL import Image

        img = Image.fromarray(image)
        if scale > 1:
            img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode()


def grid(images: list[np.ndarray], cols: int, pad: int = 2) -> np.ndarray:
    h, w, _ = images[0].shape
    rows = (len(images) + cols - 1) // cols
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


# On load, records on <body> how many <img> the browser actually decoded (`data-images-rendered`),
# next to the number embedded (`data-images-total`), so a headless browser can check the report.
_RENDER_CHECK = ("<script>window.addEventListener('load',function(){var n=0;"
                 "for(var i=0;i<document.images.length;i++){var im=document.images[i];"
                 "if(im.complete&&im.naturalWidth>0)n++;}"
                 "document.body.dataset.imagesRendered=String(n);});</script>")


def write_report(path: Path, *, title: str, metrics: dict[str, dict[str, Any]],
                 grids: list[tuple[str, np.ndarray, np.ndarray]], heatmaps: list[tuple[str, bytes]],
                 audit: list[dict[str, Any]], facts: dict[str, Any]) -> Path:
    e = html.escape
    n_images = 2 * len(grids) + len(heatmaps)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}img{image-rendering:pixelated}"
             ".pair{display:flex;gap:2em;align-items:flex-start}.pair figure{flex:1 1 0;min-width:0;margin:0}"
             ".pair img{width:100%;height:auto}</style>",
             _RENDER_CHECK, f"</head><body data-images-total='{n_images}'>",
             f"<h1>{e(title)}</h1><table>"]
    parts += [f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in facts.items()]
    parts.append("</table><h2>Unlearning metrics (%)</h2><table><tr><th>target</th><th>kind</th><th>UA</th>"
                 "<th>IRA</th><th>CRA</th><th>target images</th><th>suppressed on its own images</th>"
                 "<th>suppressed on the other images</th></tr>")
    for c, m in metrics.items():
        f = m.get("fired") or {}
        parts.append(f"<tr><td>{e(c)}</td><td>{e(m['kind'])}</td><td>{_pct(m['UA'])}</td><td>{_pct(m['IRA'])}</td>"
                     f"<td>{_pct(m['CRA'])}</td><td>{m['n_target_images']}</td><td>{_pct(f.get('images_own'))}</td>"
                     f"<td>{_pct(f.get('images_other'))}</td></tr>")
    parts.append("</table><h2>Before / after</h2>")
    for caption, before, after in grids:
        parts.append(f"<h3>{e(caption)}</h3><div class='pair'><figure><img alt='before' src='{png_data_uri(before)}'>"
                     f"<figcaption>before</figcaption></figure><figure><img alt='after' src='{png_data_uri(after)}'>"
                     "<figcaption>after</figcaption></figure></div>")
    if heatmaps:
        parts.append("<h2>Score heatmaps (features x timesteps)</h2>")
        for caption, data in heatmaps:
            parts.append(f"<figure><img alt='heatmap' style='max-width:100%' src='{png_data_uri(data)}'>"
                         f"<figcaption>{e(caption)}</figcaption></figure>")
    parts.append("<h2>Audit trail</h2><table><tr><th>seq</th><th>time</th><th>actor</th><th>action</th>"
                 "<th>subject</th><th>hash</th></tr>")
    for ev in audit:
        parts.append(f"<tr><td>{ev['seq']}</td><td>{e(str(ev['created_at']))}</td><td>{e(ev['actor'])}</td>"
                     f"<td>{e(ev['action'])}</td><td>{e(ev['subject'])}</td><td><code>{e(ev['hash'][:16])}</code></td></tr>")
    parts.append("</table></body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(parts), encoding="utf-8")
    tmp.replace(path)
    return path
