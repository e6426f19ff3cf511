"""The deployment world shared by the enforcement tests: a workspace with actors, erin's
registered signing key, an SAE of the toy pipeline, an approved mapping, a published blocklist."""
from __future__ import annotations

from pathlib import Path

import pytest

from governance.formats.mapping import MappingSpec
from registry.db import make_engine, upgrade
from registry.store import Store
from tests.helpers.enforcement import frequent_features, load_pipe, random_sae, spec_for


@pytest.fixture
def world(tmp_path: Path, toy_pipe_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """A workspace with actors, an SAE of the toy pipeline, an approved mapping, a published blocklist."""
    from governance.basemodel.loading import model_folder_hash
    from governance.common.hashing import sha256_file

    home = tmp_path / "ws"
    monkeypatch.setenv("SAEGOV_HOME", str(home))
    monkeypatch.delenv("SAEGOV_DATABASE_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    home.mkdir()
    engine = make_engine(f"sqlite:///{home / 'registry.db'}")
    upgrade(engine)
    engine.dispose()
    store = Store.open()
    store.add_actor("alice", "admin", None)
    store.add_actor("erin", "engineer", "alice")
    store.add_actor("rob", "reviewer", "alice")
    from governance.enforcement import signing

    store.register_signing_key("erin", signing.public_hex(signing.load_or_create_key()), "alice")
    sae = random_sae()
    feats = frequent_features(load_pipe(toy_pipe_dir), sae, steps=5)
    sae_dir = tmp_path / "sae"
    sha = sae.save(sae_dir)
    base_hash = model_folder_hash(toy_pipe_dir)
    store.register_base_model("toy", str(toy_pipe_dir), base_hash, "alice")
    rec = store.register_sae_version(name="toy-sae", hook_point="up_blocks.1.attentions.1", d_in=64,
                                     n_latents=sae.n_latents, k=sae.k, architecture="topk",
                                     config=sae.cfg.model_dump(), weights_uri=sae_dir.as_uri(),
                                     weights_sha256=sha, cfg_sha256=sha256_file(sae_dir / "cfg.json"), actor="erin",
                                     base_model="toy")
    store.add_concept("red", "colour", "erin", prompts=["a red circle"])
    bl = spec_for(feats, steps=10, scale=-5.0)
    entry = bl.entries[0]
    spec = MappingSpec(concept="red", selection={"rule": "top_n", "top_n": 3}, gamma=-5.0,
                       scheduler="DDIMScheduler", num_steps=10, timesteps=entry.timesteps)
    m = store.create_mapping(rec.id, "red", spec, "erin")
    store.propose(m.id, "erin", "red must go")
    store.approve(m.id, "rob", "checked the heatmap")
    store.create_blocklist("no-red", [m.id], "erin")
    store.publish_blocklist("no-red", "erin")
    return {"store": store, "home": home, "mapping": m.id, "model": toy_pipe_dir, "tmp": tmp_path}


def build(world, name="dep") -> Path:
    from governance.enforcement import build_deployment

    out = world["tmp"] / name
    build_deployment(world["store"], "no-red", 1, str(world["model"]), out, "erin")
    return out


