"""The `saegov` entry point: one click group, sub-commands registered from small modules."""
from __future__ import annotations

import importlib

import click

from cli.common import SaegovGroup

# Each module exposes `register(group)`; kept as names so that `saegov --help` imports no torch.
# In the order of the flow (docs/architecture.md).
_COMMAND_MODULES = [
    "cli.db",
    "cli.actors",
    "cli.base_models",
    "cli.toyworld",
    "cli.activations",
    "cli.saes",
    "cli.sae_train",
    "cli.concepts",
    "cli.scoring",
    "cli.mappings",
    "cli.reviews",
    "cli.policy",
    "cli.blocklists",
    "cli.keys",
    "cli.deploy",
    "cli.generate",
    "cli.audit",
    "cli.evaluate",
    "cli.demo",
]


@click.group(cls=SaegovGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="saegov")
def saegov() -> None:
    """saegov: concept registry and governance for SAE-based unlearning in diffusion models."""


for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(saegov)


def main() -> None:
    saegov(prog_name="saegov")
