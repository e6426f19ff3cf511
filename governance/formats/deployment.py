"""A deployment folder's layout and its signed `saegov/manifest.json`.

    model_index.json, unet/, vae/, ...   the diffusers `save_pretrained` layout
    saegov/saes/<hook point>/            one SAE per hook point (cfg.json + sae.safetensors)
    saegov/blocklist.json                governance.formats.blocklist
    saegov/manifest.json                 DeploymentManifest: sha256 of every other file, signed

`saegov.deployment/v2` lists every SAE with its folder (`saes`). A v1 manifest (one `sae`, its
folder `saegov/sae/`) is read as the v2 it means and verifies unchanged: the signature is
checked against the payload exactly as it was written (`signed_message`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from governance.common.errors import FormatError
from governance.common.jsonio import canonical_json
from governance.formats.blocklist import SaeRef
from governance.formats.validation import validate_model

MANIFEST_FORMAT_V1 = "saegov.deployment/v1"
MANIFEST_FORMAT = "saegov.deployment/v2"
SAEGOV_DIR = "saegov"
MANIFEST = f"{SAEGOV_DIR}/manifest.json"
SAE_DIR_V1 = f"{SAEGOV_DIR}/sae"
SAES_DIR = f"{SAEGOV_DIR}/saes"


def sae_dir(hook_point: str) -> str:
    """The folder of a hook point's SAE inside a deployment (reference layout, named by hook point)."""
    return f"{SAES_DIR}/{hook_point}"


class GenerationDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scheduler: str
    num_inference_steps: int = Field(gt=0)
    guidance_scale: float


class DeployedSae(SaeRef):
    path: str  # the SAE's folder, relative to the deployment


class ManifestPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["saegov.deployment/v1", "saegov.deployment/v2"] = MANIFEST_FORMAT
    files: dict[str, str]  # relative path -> sha256, every file of the folder but the manifest
    base_model_hash: str
    saes: list[DeployedSae] = Field(min_length=1)
    blocklist: str = Field(pattern=r"^[^@]+@[0-9]+$")  # name@version
    blocklist_sha256: str
    mapping_ids: list[int]
    approval_review_ids: list[int]
    defaults: GenerationDefaults
    error_mode: Literal["faithful", "reference"] = "faithful"
    built_by: str
    built_at: str

    @model_validator(mode="before")
    @classmethod
    def _from_v1(cls, data: Any) -> Any:
        if isinstance(data, dict) and "sae" in data and "saes" not in data:
            data = dict(data)
            data["saes"] = [{**data.pop("sae"), "path": SAE_DIR_V1}]
        return data

    @model_validator(mode="after")
    def _check(self) -> ManifestPayload:
        hooks = [s.hook_point for s in self.saes]
        if len(set(hooks)) != len(hooks):
            raise ValueError("a hook point is listed twice in saes")
        for s in self.saes:
            if f"{s.path}/sae.safetensors" not in self.files or f"{s.path}/cfg.json" not in self.files:
                raise ValueError(f"the SAE of {s.hook_point} ({s.path}) is not among the hashed files")
        return self

    def signed_message(self) -> bytes:
        """The bytes a freshly built payload's signature covers: its canonical JSON."""
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
    _written_payload: Any = PrivateAttr(default=None)

    def signed_message(self) -> bytes:
        """The bytes the signature must cover: the payload as it was written (a v1 manifest is
        read as v2, but was signed as v1), else as it is now."""
        try:
            if self._written_payload is not None:
                return canonical_json(self._written_payload).encode()
            return self.payload.signed_message()
        except ValueError:  # NaN or infinity: no canonical JSON, so nothing a signature can cover
            raise FormatError(f"{MANIFEST}: payload is not canonical JSON (NaN or infinity)") from None


def read_deployment_manifest(folder: Path) -> tuple[DeploymentManifest, bytes]:
    """(manifest, its raw bytes) of a deployment folder."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FormatError(f"{folder} is not a saegov deployment (no {MANIFEST})")
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{MANIFEST}: malformed JSON ({exc})") from None
    manifest = validate_model(DeploymentManifest, data, MANIFEST)
    manifest._written_payload = data["payload"]  # the signed object, parsed once with the model
    return manifest, raw


def manifest_bytes(manifest: DeploymentManifest) -> bytes:
    return (canonical_json(manifest.model_dump(mode="json")) + "\n").encode()


def write_deployment_manifest(folder: Path, manifest: DeploymentManifest) -> bytes:
    """Write the manifest; returns the bytes written (their sha256 is recorded in the registry)."""
    data = manifest_bytes(manifest)
    (Path(folder) / MANIFEST).write_bytes(data)
    return data
