"""A deployment folder's layout and its signed `saegov/manifest.json` (`saegov.deployment/v1`).

    model_index.json, unet/, vae/, ...   the diffusers `save_pretrained` layout
    saegov/sae/                          the SAE (cfg.json + sae.safetensors)
    saegov/blocklist.json                governance.formats.blocklist
    saegov/manifest.json                 DeploymentManifest: sha256 of every other file, signed
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from governance.common.errors import FormatError
from governance.common.jsonio import canonical_json
from governance.formats.blocklist import SaeRef
from governance.formats.validation import parse_json_model

MANIFEST_FORMAT = "saegov.deployment/v1"
SAEGOV_DIR = "saegov"
MANIFEST = f"{SAEGOV_DIR}/manifest.json"
SAE_DIR = f"{SAEGOV_DIR}/sae"


class GenerationDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scheduler: str
    num_inference_steps: int = Field(gt=0)
    guidance_scale: float


class ManifestPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["saegov.deployment/v1"] = MANIFEST_FORMAT
    files: dict[str, str]  # relative path -> sha256, every file of the folder but the manifest
    base_model_hash: str
    sae: SaeRef
    blocklist: str  # name@version
    blocklist_sha256: str
    mapping_ids: list[int]
    approval_review_ids: list[int]
    defaults: GenerationDefaults
    error_mode: Literal["faithful", "reference"] = "faithful"
    built_by: str
    built_at: str

    def signed_message(self) -> bytes:
        """The bytes the signature covers: the payload's canonical JSON."""
        return canonical_json(self.model_dump(mode="json")).encode()


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["ed25519"] = "ed25519"
    public_key: str  # hex, raw 32 bytes
    value: str  # hex signature over the canonical JSON of the payload


class DeploymentManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payload: ManifestPayload
    signature: Signature


def read_deployment_manifest(folder: Path) -> tuple[DeploymentManifest, bytes]:
    """(manifest, its raw bytes) of a deployment folder."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FormatError(f"{folder} is not a saegov deployment (no {MANIFEST})")
    raw = path.read_bytes()
    return parse_json_model(DeploymentManifest, raw, MANIFEST), raw


def manifest_bytes(manifest: DeploymentManifest) -> bytes:
    return (canonical_json(manifest.model_dump(mode="json")) + "\n").encode()


def write_deployment_manifest(folder: Path, manifest: DeploymentManifest) -> bytes:
    """Write the manifest; returns the bytes written (their sha256 is recorded in the registry)."""
    data = manifest_bytes(manifest)
    (Path(folder) / MANIFEST).write_bytes(data)
    return data
