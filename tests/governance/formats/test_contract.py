"""One contract for every file format (governance.formats): what a writer writes, its reader reads
back equal; a file written by the code before the formats moved here (data/stop10) still reads,
and re-writing it gives the same bytes; a malformed file is one `FormatError` line."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from governance.common.errors import FormatError
from governance.formats import (
    activations, audit_log, blocklist, checkpoint, deployment, mapping, prompts, sae_config, supervision, sweep,
    trace, trusted_keys,
)

OLD = Path(__file__).parent / "data" / "stop10"
DEPLOYMENT = OLD / "deployment"


def _sae(tmp: Path) -> tuple[Any, Any]:
    cfg, raw = sae_config.read_sae_config(DEPLOYMENT / "saegov" / "sae")
    assert raw == (DEPLOYMENT / "saegov" / "sae" / "cfg.json").read_bytes()
    sae_config.write_sae_config(tmp, cfg)
    assert (tmp / "cfg.json").read_bytes() == raw
    return cfg, sae_config.read_sae_config(tmp)[0]


def _activations(tmp: Path) -> tuple[Any, Any]:
    m, raw = activations.read_activation_manifest(OLD / "activations")
    activations.write_activation_manifest(tmp, m)
    assert (tmp / "manifest.json").read_bytes() == raw
    return m, activations.read_activation_manifest(tmp)[0]


def _mapping(tmp: Path) -> tuple[Any, Any]:
    spec = mapping.read_mapping(OLD / "mapping.json")
    mapping.write_mapping(tmp / "m.json", spec)
    assert (tmp / "m.json").read_bytes() == (OLD / "mapping.json").read_bytes()
    return spec, mapping.read_mapping(tmp / "m.json")


def _blocklist(tmp: Path) -> tuple[Any, Any]:
    old = json.loads((DEPLOYMENT / "saegov" / "blocklist.json").read_text())
    assert old["format"] == "saegov.blocklist/v1"
    spec = blocklist.read_blocklist(DEPLOYMENT / "saegov")  # v1 reads as the v2 it means
    assert spec.format == "saegov.blocklist/v2" and spec.saes == [blocklist.SaeRef(**old["sae"])]
    assert {e.hook_point for e in spec.entries} == {old["sae"]["hook_point"]}
    blocklist.write_blocklist(tmp, spec)
    again = blocklist.read_blocklist(tmp / "blocklist.json")
    blocklist.write_blocklist(tmp / "again.json", again)
    assert (tmp / "again.json").read_bytes() == (tmp / "blocklist.json").read_bytes()
    return spec, again


def _deployment_manifest(tmp: Path) -> tuple[Any, Any]:
    from governance.enforcement import signing

    m, raw = deployment.read_deployment_manifest(DEPLOYMENT)
    # A v1 manifest: read as v2 (its one SAE in saegov/sae), its signature still over the v1 payload.
    assert m.payload.format == "saegov.deployment/v1" and [s.path for s in m.payload.saes] == ["saegov/sae"]
    assert signing.verify(m.signature.public_key, m.signed_message(), m.signature.value)
    assert not signing.verify(m.signature.public_key, m.payload.signed_message(), m.signature.value)
    fresh = deployment.DeploymentManifest(payload=m.payload, signature=m.signature)
    (tmp / "saegov").mkdir()
    deployment.write_deployment_manifest(tmp, fresh)
    back, raw_back = deployment.read_deployment_manifest(tmp)
    assert deployment.write_deployment_manifest(tmp, back) == raw_back
    return fresh.model_dump(), back.model_dump()


def _trace(tmp: Path) -> tuple[Any, Any]:
    from PIL import Image

    t = trace.read_trace(OLD / "trace.json")
    assert trace.read_trace(OLD / "trace.png") == t  # the PNG chunk carries the same trace
    assert t.format == "saegov.trace/v1" and t.suppressed_calls() > 0
    assert {s.hook_point for c in t.unet_calls for s in c.suppressed} == {None}
    trace.write_trace_json(tmp / "t.json", t)
    assert (tmp / "t.json").read_bytes() == (OLD / "trace.json").read_bytes()
    with Image.open(OLD / "trace.png") as img:
        trace.write_trace_png(tmp / "t.png", img.copy(), t)
    assert trace.read_trace_png(tmp / "t.png") == t
    return t, trace.read_trace(tmp / "t.json")


def _sweep(tmp: Path) -> tuple[Any, Any]:
    text = (OLD / "sweep.json").read_text()
    table = sweep.parse_sweep_table(text)
    assert table.file_text() == text
    assert sweep.sweep_header(table.evidence_text()).seeds == table.seeds
    return table, sweep.parse_sweep_table(table.evidence_text())


def _prompts(tmp: Path) -> tuple[Any, Any]:
    lines = prompts.read_prompts(OLD / "prompts.txt")
    assert lines == prompts.read_prompts(OLD / "prompts.json") == ["a red circle", "a red square"]
    prompts.write_prompts(tmp / "p.txt", lines)
    return lines, prompts.read_prompts(tmp / "p.txt")


def _checkpoint(tmp: Path) -> tuple[Any, Any]:
    cp = checkpoint.read_checkpoint(OLD / "checkpoint.json")
    checkpoint.write_checkpoint(tmp / "cp.json", cp)
    assert (tmp / "cp.json").read_bytes() == (OLD / "checkpoint.json").read_bytes()
    # Signed before state_sha256 existed: the signed message is unchanged (absent fields left out).
    assert "state_sha256" not in json.loads(cp.signed_message())
    proof = checkpoint.ConsistencyProof(old_size=1, new_size=2, old_root="a" * 64, new_root="b" * 64,
                                        hashes=["c" * 64])
    (tmp / "proof.json").write_text(proof.model_dump_json())
    assert checkpoint.read_consistency_proof(tmp / "proof.json") == proof
    return cp, checkpoint.read_checkpoint(tmp / "cp.json")


def _audit_log(tmp: Path) -> tuple[Any, Any]:
    """New since stop 10 (no old file): an exported log written and read back row for row; a
    line that is not an event is refused with its line number."""
    rows = [(1, "2026-01-01T00:00:00.000000Z", "alice", "actor.add", "actor:alice", '{"first":true}', "0" * 64,
             "a" * 64, None, None),
            (2, "2026-01-01T00:00:01.000000Z", "alice", "key.register", "key:" + "b" * 64, "{}", "a" * 64,
             "c" * 64, "b" * 64, "d" * 128)]
    header = audit_log.AuditLogHeader(size=2, head_hash="c" * 64)
    assert audit_log.write_audit_log(tmp / "log.jsonl", header, rows) == 2
    read_header, read_rows = audit_log.read_audit_log(tmp / "log.jsonl")
    (tmp / "bad.jsonl").write_text((tmp / "log.jsonl").read_text() + '{"seq": "x"}\n')
    with pytest.raises(FormatError, match="bad.jsonl:4"):
        list(audit_log.read_audit_log(tmp / "bad.jsonl")[1])
    return (header, rows), (read_header, list(read_rows))


def _trusted_keys(tmp: Path) -> tuple[Any, Any]:
    """New since stop 10 (no old file): written, read back; a malformed key is refused."""
    from governance.common.errors import FormatError

    keys = trusted_keys.TrustedKeys(keys=[trusted_keys.TrustedKey(public_key="ab" * 32, owner="erin")])
    trusted_keys.write_trusted_keys(tmp / "t.json", keys)
    (tmp / "bad.json").write_text('{"format": "saegov.trusted-keys/v1", "keys": [{"public_key": "XY"}]}')
    with pytest.raises(FormatError):
        trusted_keys.read_trusted_keys(tmp / "bad.json")
    return keys, trusted_keys.read_trusted_keys(tmp / "t.json")


def _supervision(tmp: Path) -> tuple[Any, Any]:
    # New with issue 14 (no stop-10 file): a supervised SAE's cfg.json is an old one plus the
    # `supervision` key, which an unsupervised cfg.json lacks.
    cfg, _ = sae_config.read_sae_config(DEPLOYMENT / "saegov" / "sae")
    assert supervision.supervision_of(cfg) is None
    spec = supervision.SupervisionSpec(
        concepts=[supervision.SupervisedConcept(name="red", kind="colour", latents=[0], prompts_sha256="ab" * 32,
                                                positive_prompts=4)],
        latents_per_concept=1, assign_weight=10.0, decorrelation_weight=100.0)
    sae_config.write_sae_config(tmp, sae_config.SaeConfig(**{**cfg.model_dump(), "supervision": spec.model_dump()}))
    again, raw = sae_config.read_sae_config(tmp)
    assert {k: v for k, v in json.loads(raw).items() if k != "supervision"} == cfg.to_json_dict()
    bad = dict(json.loads(raw), supervision={**spec.model_dump(), "latents_per_concept": 2})
    with pytest.raises(FormatError, match="supervision"):
        supervision.supervision_of(bad)
    return spec, supervision.supervision_of(again, cfg.n_latents)


FORMATS: dict[str, Callable[[Path], tuple[Any, Any]]] = {
    "sae_config": _sae, "activations": _activations, "mapping": _mapping, "blocklist": _blocklist,
    "deployment": _deployment_manifest, "trace": _trace, "sweep": _sweep, "prompts": _prompts,
    "checkpoint": _checkpoint, "trusted_keys": _trusted_keys, "audit_log": _audit_log,
    "supervision": _supervision,
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_old_file_reads_and_round_trips(name: str, tmp_path: Path) -> None:
    written, read_back = FORMATS[name](tmp_path)
    assert read_back == written


def test_every_format_module_is_under_contract() -> None:
    import pkgutil

    import governance.formats as pkg

    # validation: the shared reader; unet_config: a read-only view of diffusers' own file (below).
    modules = {m.name for m in pkgutil.iter_modules(pkg.__path__)} - {"validation", "unet_config"}
    assert modules == set(FORMATS)


def test_unet_config_lists_exactly_the_unets_hook_points() -> None:
    """Torch-free hook points from unet/config.json equal the modules of the real UNet (the toy
    world's and SD 1.5's), with the channels each block outputs."""
    from diffusers import UNet2DConditionModel

    from governance.basemodel.hooks import hook_point_candidates
    from governance.basemodel.sd15 import SD15_UNET_CONFIG
    from governance.formats.unet_config import read_unet_config, strip_unet_prefix, unet_config_dict
    from governance.toyworld.paths import WEIGHTS_DIR

    toy = read_unet_config(WEIGHTS_DIR)
    assert sorted(toy.hook_points()) == sorted(hook_point_candidates(
        UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(WEIGHTS_DIR), subfolder="unet"))))
    sd15 = unet_config_dict({k: list(v) if isinstance(v, tuple) else v for k, v in SD15_UNET_CONFIG.items()})
    points = sd15.hook_points()
    import torch

    with torch.device("meta"):  # the SD 1.5 architecture without allocating its weights
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    assert sorted(points) == sorted(hook_point_candidates(unet))
    assert points["up_blocks.1.attentions.1"] == 1280 and points["mid_block.attentions.0"] == 1280
    assert points["down_blocks.0.attentions.0"] == 320 and strip_unet_prefix("unet.mid_block.attentions.0") == \
        "mid_block.attentions.0"


# A malformed file of each format: (writer of the bad file, reader) -> one FormatError line.
BAD: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "sae_config": ("cfg.json", lambda p: sae_config.read_sae_config(p.parent)),
    "activations": ("manifest.json", lambda p: activations.read_activation_manifest(p.parent)),
    "mapping": ("m.json", mapping.read_mapping),
    "blocklist": ("blocklist.json", blocklist.read_blocklist),
    "deployment": ("saegov/manifest.json", lambda p: deployment.read_deployment_manifest(p.parent.parent)),
    "trace": ("t.json", trace.read_trace),
    "sweep": ("s.json", lambda p: sweep.parse_sweep_table(p.read_text())),
    "prompts": ("p.json", prompts.read_prompts),
    "checkpoint": ("cp.json", checkpoint.read_checkpoint),
}


@pytest.mark.parametrize("content", ["{not json", "[]", '{"format": "saegov.other/v9"}'])
@pytest.mark.parametrize("name", sorted(BAD))
def test_malformed_file_is_one_format_error(name: str, content: str, tmp_path: Path) -> None:
    rel, read = BAD[name]
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    with pytest.raises(FormatError) as info:
        read(path)
    assert len(str(info.value).splitlines()) == 1


def test_old_deployment_loads_its_sae(tmp_path: Path) -> None:
    """The SAE folder of a deployment written by the old code loads, hash-checked, unchanged."""
    from governance.enforcement.intervention import EnforcedBlocklist

    m, _ = deployment.read_deployment_manifest(DEPLOYMENT)
    folder = tmp_path / "saegov"
    shutil.copytree(DEPLOYMENT / "saegov", folder)
    bl = EnforcedBlocklist.load(tmp_path, {s.hook_point: (s.path, m.payload.files[f"{s.path}/sae.safetensors"])
                                           for s in m.payload.saes})
    assert bl.sae.n_latents == json.loads((folder / "sae" / "cfg.json").read_text())["d_in"] * 1
    assert EnforcedBlocklist.load(tmp_path).sae.n_latents == bl.sae.n_latents  # v1 layout found by itself
    assert [e.concept for e in bl.spec.entries] == ["red"]
