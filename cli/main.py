"""The `saegov` entry point: one click group, sub-commands registered from small modules."""
from __future__ import annotations

import importlib

import click

# Each module exposes `register(group)`; kept as names so that `saegov --help` imports no torch.
_COMMAND_MODULES = [
    "cli.toyworld",
    "cli.db",
    "cli.actors",
    "cli.base_models",
    "cli.saes",
    "cli.sae_train",
    "cli.concepts",
    "cli.mappings",
    "cli.reviews",
    "cli.blocklists",
    "cli.audit",
    "cli.activations",
    "cli.scoring",
    "cli.deploy",
    "cli.evaluate",
    "cli.demo",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="saegov")
def saegov() -> None:
    """saegov: concept registry and governance for SAE-based unlearning in diffusion models."""


for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # a module not written yet must not break the others
        if exc.name != _name:
            raise
        continue
    _mod.register(saegov)


def main() -> None:
    saegov(prog_name="saegov")
