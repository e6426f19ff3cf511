"""Every file and JSON artefact saegov reads or writes, torch-free (registry/ imports it too):
a versioned pydantic model with its reader and writer, one module each.

| artefact | model | module |
|---|---|---|
| SAE folder `cfg.json` | SaeConfig | sae_config |
| activation dataset `manifest.json` | ActivationManifest | activations |
| mapping JSON `saegov.mapping/v1` | MappingSpec | mapping |
| deployment `saegov/blocklist.json` | BlocklistSpec | blocklist |
| deployment `saegov/manifest.json` | DeploymentManifest | deployment |
| generation trace (JSON, PNG chunk) | Trace | trace |
| sweep table `saegov.sweep/v1` | SweepTable | sweep |
| prompt files | list[str] | prompts |
| audit checkpoint | Checkpoint | checkpoint |
"""
from __future__ import annotations

from governance.formats.activations import ActivationManifest, read_activation_manifest, write_activation_manifest
from governance.formats.blocklist import BlockedConcept, BlocklistSpec, read_blocklist, write_blocklist
from governance.formats.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from governance.formats.deployment import DeploymentManifest, read_deployment_manifest, write_deployment_manifest
from governance.formats.mapping import FeatureEntry, MappingSpec, read_mapping, write_mapping
from governance.formats.prompts import read_prompts, write_prompts
from governance.formats.sae_config import SaeConfig, read_sae_config, write_sae_config
from governance.formats.sweep import SweepTable, parse_sweep_table
from governance.formats.trace import Trace, read_trace, write_trace_json, write_trace_png

__all__ = [
    "ActivationManifest", "BlockedConcept", "BlocklistSpec", "Checkpoint", "DeploymentManifest", "FeatureEntry",
    "MappingSpec", "SaeConfig", "SweepTable", "Trace", "parse_sweep_table", "read_activation_manifest",
    "read_blocklist", "read_checkpoint", "read_deployment_manifest", "read_mapping", "read_prompts",
    "read_sae_config", "read_trace", "write_activation_manifest", "write_blocklist", "write_checkpoint",
    "write_deployment_manifest", "write_mapping", "write_prompts", "write_sae_config", "write_trace_json",
    "write_trace_png",
]
