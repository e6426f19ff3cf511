"""File artifacts read without torch: sha256, safetensors headers, reference SAE folders."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

from governance.common.hashing import sha256_bytes, sha256_file
from governance.common.errors import FormatError
from governance.formats.sae_config import CFG_NAME, WEIGHTS_NAME, SaeConfig
from governance.formats.supervision import supervision_of
from governance.formats.validation import parse_json_model
from registry.errors import ValidationFailed

DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
MAX_HEADER = 100 * 1024 * 1024



@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor names, dtypes and shapes from a safetensors file, with its layout checked:
    8-byte little-endian header length, a JSON header, then the byte buffer."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise ValidationFailed(f"{path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", raw_len)
            if n == 0 or n > MAX_HEADER or n > size - 8:
                raise ValidationFailed(f"{path}: corrupt safetensors header length {n}")
            header_bytes = f.read(n)
    except OSError as exc:
        raise ValidationFailed(f"{path}: cannot read ({exc.strerror})") from None
    try:
        header = json.loads(header_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValidationFailed(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise ValidationFailed(f"{path}: corrupt safetensors header (not an object)")
    data_len = size - 8 - n
    out: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            if dtype not in DTYPE_SIZES or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise ValueError
            if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise ValidationFailed(f"{path}: corrupt safetensors entry for {name!r}") from None
        if end > data_len:
            raise ValidationFailed(f"{path}: tensor {name!r} runs past the end of the file")
        if end - begin != prod(shape) * DTYPE_SIZES[dtype]:
            raise ValidationFailed(f"{path}: tensor {name!r} byte size does not match its shape")
        spans.append((begin, end))
        out[name] = TensorInfo(dtype, shape)
    spans.sort()
    for (_, e1), (b2, _) in zip(spans, spans[1:]):
        if b2 < e1:
            raise ValidationFailed(f"{path}: overlapping tensors in safetensors file")
    return out


@dataclass(frozen=True)
class SAECheckpointInfo:
    folder: Path
    config: SaeConfig
    config_raw: dict
    tensors: dict[str, TensorInfo]
    weights_sha256: str
    cfg_sha256: str


def inspect_sae_folder(folder: Path) -> SAECheckpointInfo:
    """Validate a reference-format SAE folder (`cfg.json` + `sae.safetensors`)."""
    folder = Path(folder)
    cfg_path, weights_path = folder / CFG_NAME, folder / WEIGHTS_NAME
    if not folder.is_dir():
        raise ValidationFailed(f"{folder}: not a directory")
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise ValidationFailed(f"{folder}: missing {p.name}")
    raw = cfg_path.read_bytes()
    cfg: SaeConfig = parse_json_model(SaeConfig, raw, str(cfg_path))
    try:
        # A supervised SAE's assignment is read when a concept is scored on it: refused here,
        # at registration, rather than later.
        supervision_of(cfg, cfg.n_latents)
    except FormatError as exc:
        raise ValidationFailed(f"{cfg_path}: {exc}") from None
    tensors = read_safetensors_header(weights_path)
    for name, shape in cfg.weight_shapes().items():
        if name not in tensors:
            raise ValidationFailed(f"{weights_path}: missing tensor {name!r}")
        if tensors[name].shape != shape:
            raise ValidationFailed(
                f"{weights_path}: tensor {name!r} has shape {list(tensors[name].shape)}, "
                f"cfg.json implies {list(shape)}"
            )
        if not tensors[name].dtype.startswith(("F", "BF")):
            raise ValidationFailed(f"{weights_path}: tensor {name!r} has non-float dtype")
    return SAECheckpointInfo(
        folder=folder.resolve(),
        config=cfg,
        config_raw=json.loads(raw),
        tensors=tensors,
        weights_sha256=sha256_file(weights_path),
        cfg_sha256=sha256_bytes(raw),
    )
