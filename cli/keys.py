"""`saegov key show|register|revoke|list|export`: deployment-signing keys.

Each person signs the deployments they build with their own Ed25519 key, kept in their config
folder (`SAEGOV_CONFIG_DIR`, default `~/.config/saegov`); an admin registers its public half in
the registry, which is what makes those deployments trusted.
"""
from __future__ import annotations

from pathlib import Path

import click

from cli.common import actor_option, emit, json_option, open_store, print_json, subgroup

KEY_COLUMNS = ["id", "public_key", "actor", "registered_by", "created_at", "revoked_at"]


def register(root: click.Group) -> None:
    grp = subgroup(root, "key", "Deployment-signing keys: your own, and those the registry trusts.")

    @grp.command("show")
    @json_option
    def show(as_json: bool) -> None:
        """Print your public signing key (created in your config folder on first use)."""
        from governance.enforcement import signing

        public = signing.public_hex(signing.load_or_create_key())  # SigningError is one line
        if as_json:
            print_json({"public_key": public, "path": str(signing.key_path())})
        else:
            click.echo(public)

    @grp.command("register")
    @click.argument("owner")
    @click.option("--public-key", required=True, help="64 hex digits: what `saegov key show` prints for OWNER.")
    @actor_option
    @json_option
    def register_(owner: str, public_key: str, actor: str | None, as_json: bool) -> None:
        """Register OWNER's public key: deployments it signs become trusted (admins only)."""
        emit(open_store().register_signing_key(owner, public_key, actor), as_json, KEY_COLUMNS)

    @grp.command("revoke")
    @click.argument("public_key")
    @click.option("--reason", default="", help="Why (recorded in the audit log).")
    @actor_option
    @json_option
    def revoke(public_key: str, reason: str, actor: str | None, as_json: bool) -> None:
        """Revoke a key: deployments it signed no longer verify (admins only)."""
        emit(open_store().revoke_signing_key(public_key, actor, reason), as_json, KEY_COLUMNS)

    @grp.command("list")
    @json_option
    def list_(as_json: bool) -> None:
        """List registered keys, revoked ones included."""
        emit(open_store().list_signing_keys(), as_json, KEY_COLUMNS)

    @grp.command("export")
    @click.option("--out", type=click.Path(path_type=Path), required=True, help="Trust store file to write.")
    def export(out: Path) -> None:
        """Write the registry's trusted deployment keys (of actors not disabled) as a trust store
        for offline verifiers (`deploy verify --offline --trusted-keys FILE`, SAEGOV_TRUSTED_KEYS)."""
        from governance.common.jsonio import write_json_atomic
        from governance.formats.trusted_keys import TrustedKey, TrustedKeys

        keys = open_store().trusted_signing_keys(active_owners_only=True)
        store = TrustedKeys(keys=[TrustedKey(public_key=k, owner=r.actor) for k, r in sorted(keys.items())])
        write_json_atomic(out, store.model_dump(mode="json"))
        click.echo(f"{len(store.keys)} trusted key(s) written to {out}")
