"""Helpers for registry tests: actors, PostgreSQL reset, the attacker's trigger drop, tiny SAE
folders (safetensors written by hand), mapping JSON."""
from __future__ import annotations

import importlib
import json
import os
import struct
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from registry.db import make_engine, upgrade
from registry.store import Store


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """Zero-filled tensors {name: (dtype, shape)}; only F32/F16 used here."""
    sizes = {"F32": 4, "F16": 2}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + b"\0" * offset)


def make_sae_folder(root: Path, name: str = "sae", d_in: int = 8, expansion: int = 4, k: int = 2,
                    num_latents: int = 0, **cfg_extra: Any) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    n = num_latents or d_in * expansion
    cfg = {"expansion_factor": expansion, "normalize_decoder": True, "num_latents": num_latents,
           "k": k, "batch_topk": True, "sample_topk": False, "input_unit_norm": False,
           "multi_topk": False, "d_in": d_in, **cfg_extra}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    write_safetensors(folder / "sae.safetensors", {
        "encoder.weight": ("F32", (n, d_in)), "encoder.bias": ("F32", (n,)),
        "W_dec": ("F32", (n, d_in)), "b_dec": ("F32", (d_in,))})
    return folder


def mapping_spec(concept: str = "red", features: tuple[int, ...] = (1, 5),
                 timesteps: tuple[int, ...] = (981, 961)) -> dict[str, Any]:
    return {
        "format": "saegov.mapping/v1",
        "concept": concept,
        "selection": {"rule": "tau", "tau": 99.99},
        "gamma": -1.0,
        "scheduler": "DDIMScheduler",
        "num_steps": 50,
        "timesteps": {str(t): [{"feature": f, "score": 0.5 - 0.01 * i, "scale": -0.3, "gate": 0.1}
                               for i, f in enumerate(features)] for t in timesteps},
        "evidence": [{"kind": "mlflow_run", "ref": "run-123"}],
    }


def write_mapping(path: Path, **kw: Any) -> Path:
    path.write_text(json.dumps(mapping_spec(**kw)))
    return path


PG_ENV = "SAEGOV_TEST_POSTGRES_URL"
ACTORS = [("alice", "admin"), ("erin", "engineer"), ("emil", "engineer"),
          ("rob", "reviewer"), ("rita", "reviewer"), ("aud", "auditor")]

_migration = importlib.import_module("migrations.versions.0001_initial_schema")
_no_replace = importlib.import_module("migrations.versions.0003_no_replace_of_audit_rows")


def pg_url() -> str | None:
    return os.environ.get(PG_ENV) or None


def reset_postgres(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def seed_actors(store: Store) -> None:
    for name, role in ACTORS:
        store.add_actor(name, role, "alice")


def drop_audit_triggers(engine: Engine) -> None:
    """What an attacker with table rights does first; tests then rewrite rows directly."""
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            for name in [*_migration._SQLITE_TRIGGERS, *_no_replace.SQLITE_TRIGGERS]:
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
        else:
            for name in _migration._PG_TRIGGERS:
                table = "audit_head" if name.startswith("audit_head") else "audit_events"
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name} ON {table}")


def make_model_folder(root: Path, channels: int) -> Path:
    """A base-model folder holding only `unet/config.json` (the toy UNet's blocks, `channels`
    wide): enough for `sae import --base-model` to check hook points and widths."""
    folder = root / f"model-{channels}"
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    (folder / "unet" / "config.json").write_text(json.dumps({
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [channels] * 3, "layers_per_block": 2}))
    return folder

# Three colour concepts with two prompts each, at the block the scoring tests hook.
HOOK = "up_blocks.1.attentions.1"
PROMPTS = {
    "red": ["a red circle", "a red square in striped style"],
    "green": ["a green circle", "a green square in striped style"],
    "blue": ["a blue circle", "a blue square in striped style"],
}


def local_workspace(home: Path, monkeypatch: Any, admin: str) -> Store:
    """A fresh workspace at `home` for this test's environment: a migrated SQLite registry with
    `admin` as its first actor, a local MLflow store (no tracking URI inherited)."""
    home.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{home / 'registry.db'}"
    monkeypatch.setenv("SAEGOV_HOME", str(home))
    monkeypatch.setenv("SAEGOV_DATABASE_URL", url)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    store = Store.open(url)
    store.add_actor(admin, "admin", None)
    return store
