"""`saegov blocklist create|add|remove|publish|show|list`."""
from __future__ import annotations

import click

from cli.common import actor_option, emit, json_option, open_store, parse_ref, print_table, subgroup

LIST_COLUMNS = ["id", "name", "draft_mapping_ids", "versions", "created_by"]


def register(root: click.Group) -> None:
    grp = subgroup(root, "blocklist", "Blocklists: approved mappings frozen into numbered versions.")

    @grp.command("create")
    @click.argument("name")
    @click.option("--mapping", "mapping_ids", type=int, multiple=True, required=True, help="Mapping ID (repeat).")
    @actor_option
    @json_option
    def create(name: str, mapping_ids: tuple[int, ...], actor: str | None, as_json: bool) -> None:
        """Create a blocklist whose draft holds the given mappings."""
        rec = open_store().create_blocklist(name, list(mapping_ids), actor)
        emit(rec, as_json, ["id", "name", "draft_mapping_ids"])

    @grp.command("add")
    @click.argument("name")
    @click.option("--mapping", "mapping_ids", type=int, multiple=True, required=True)
    @actor_option
    @json_option
    def add(name: str, mapping_ids: tuple[int, ...], actor: str | None, as_json: bool) -> None:
        """Add mappings to the draft of the next version."""
        emit(open_store().edit_blocklist(name, actor, add=mapping_ids), as_json, ["id", "name", "draft_mapping_ids"])

    @grp.command("remove")
    @click.argument("name")
    @click.option("--mapping", "mapping_ids", type=int, multiple=True, required=True)
    @actor_option
    @json_option
    def remove(name: str, mapping_ids: tuple[int, ...], actor: str | None, as_json: bool) -> None:
        """Remove mappings from the draft of the next version."""
        emit(open_store().edit_blocklist(name, actor, remove=mapping_ids), as_json, ["id", "name", "draft_mapping_ids"])

    @grp.command("publish")
    @click.argument("name")
    @actor_option
    @json_option
    def publish(name: str, actor: str | None, as_json: bool) -> None:
        """Freeze the draft as a new immutable version (all entries approved, one SAE per hook point).

        A version that loosens the one in force (drops a concept, or serves it by another
        mapping) is pending until a reviewer approves it (`blocklist approve`)."""
        rec = open_store().publish_blocklist(name, actor)
        if as_json:
            emit(rec, True)
        elif rec.state == "pending":
            click.echo(f"{rec.ref} loosens the version in force: pending until a reviewer runs "
                       f"`saegov blocklist approve {rec.ref} -j ...`")
        else:
            click.echo(f"published {rec.ref} ({len(rec.entries)} mappings, sha256 {rec.content_sha256[:12]})")

    @grp.command("approve")
    @click.argument("ref", metavar="NAME@VERSION")
    @click.option("--justification", "-j", default=None, help="Why (required).")
    @actor_option
    @json_option
    def approve(ref: str, justification: str | None, actor: str | None, as_json: bool) -> None:
        """Approve a pending version that loosens a blocklist (reviewers; never its publisher)."""
        name, version = parse_ref(ref)
        if version is None:
            raise click.BadParameter("give NAME@VERSION", param_hint="REF")
        rec = open_store().approve_blocklist(name, version, actor, justification or "")
        if as_json:
            emit(rec, True)
        else:
            click.echo(f"published {rec.ref} (loosening approved by {rec.approved_by})")

    @grp.command("show")
    @click.argument("ref")
    @json_option
    def show(ref: str, as_json: bool) -> None:
        """Show NAME (draft and versions) or NAME@VERSION (entries, approvals, state)."""
        name, version = parse_ref(ref)
        store = open_store()
        if version is None:
            rec = store.describe_blocklist(name)
            if as_json:
                emit(rec, True)
                return
            click.echo(f"blocklist {rec.name}  draft mappings: {rec.draft_mapping_ids or '-'}")
            print_table([v.to_json() for v in rec.versions],
                        ["version", "state", "n_entries", "content_sha256", "published_by",
                         "published_at", "revoked_by_mapping_id"], "versions")
            return
        v = store.get_blocklist(name, version)
        if as_json:
            emit(v, True)
            return
        state = v.state.upper() if v.state == "revoked" else v.state
        extra = f" (mapping {v.revoked_by_mapping_id} revoked)" if v.revoked_by_mapping_id else ""
        saes = ", ".join(f"{x.hook_point}: {x.sae_ref}" for x in v.saes)
        click.echo(f"blocklist {v.ref}: {state}{extra}  saes {saes}  sha256 {v.content_sha256}")
        print_table([e.to_json() | {"features": sum(len(x) for x in e.timesteps.values())} for e in v.entries],
                    ["mapping_id", "concept", "hook_point", "mapping_state", "approval_review_id", "approved_by",
                     "approved_at", "gamma", "features"], "entries")

    @grp.command("list")
    @json_option
    def list_(as_json: bool) -> None:
        """List blocklists."""
        recs = open_store().list_blocklists()
        if as_json:
            emit(recs, True)
            return
        print_table([{"id": r.id, "name": r.name, "draft": r.draft_mapping_ids,
                      "versions": ", ".join(f"{v.version}:{v.state}" for v in r.versions) or "-",
                      "created_by": r.created_by} for r in recs],
                    ["id", "name", "draft", "versions", "created_by"])
