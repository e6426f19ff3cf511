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
from governance.common.hashing import sha256_file
from governance.formats import activations, blocklist, checkpoint, deployment, mapping, prompts, sae_config, sweep, trace

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
    spec = blocklist.read_blocklist(DEPLOYMENT / "saegov")
    blocklist.write_blocklist(tmp, spec)
    manifest, _ = deployment.read_deployment_manifest(DEPLOYMENT)
    # Re-written byte for byte: the signed manifest's hash of blocklist.json still matches.
    assert sha256_file(tmp / "blocklist.json") == manifest.payload.files["saegov/blocklist.json"]
    return spec, blocklist.read_blocklist(tmp / "blocklist.json")


def _deployment_manifest(tmp: Path) -> tuple[Any, Any]:
    from governance.enforcement import signing

    m, raw = deployment.read_deployment_manifest(DEPLOYMENT)
    assert signing.verify(m.signature.public_key, m.payload.signed_message(), m.signature.value)
    (tmp / "saegov").mkdir()
    assert deployment.write_deployment_manifest(tmp, m) == raw
    return m, deployment.read_deployment_manifest(tmp)[0]


def _trace(tmp: Path) -> tuple[Any, Any]:
    from PIL import Image

    t = trace.read_trace(OLD / "trace.json")
    assert trace.read_trace(OLD / "trace.png") == t  # the PNG chunk carries the same trace
    assert t.suppressed_calls() > 0
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
    return cp, checkpoint.read_checkpoint(tmp / "cp.json")


FORMATS: dict[str, Callable[[Path], tuple[Any, Any]]] = {
    "sae_config": _sae, "activations": _activations, "mapping": _mapping, "blocklist": _blocklist,
    "deployment": _deployment_manifest, "trace": _trace, "sweep": _sweep, "prompts": _prompts,
    "checkpoint": _checkpoint,
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_old_file_reads_and_round_trips(name: str, tmp_path: Path) -> None:
    written, read_back = FORMATS[name](tmp_path)
    assert read_back == written


def test_every_format_module_is_under_contract() -> None:
    import pkgutil

    import governance.formats as pkg

    modules = {m.name for m in pkgutil.iter_modules(pkg.__path__)} - {"validation"}
    assert modules == set(FORMATS)


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
    bl = EnforcedBlocklist.load(folder, expected_sae_sha256=m.payload.files["saegov/sae/sae.safetensors"])
    assert bl.sae.n_latents == json.loads((folder / "sae" / "cfg.json").read_text())["d_in"] * 1
    assert [e.concept for e in bl.spec.entries] == ["red"]
