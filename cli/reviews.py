"""`saegov review propose|approve|reject|revoke MAPPING --justification TEXT`."""
from __future__ import annotations

import click

from cli.common import actor_option, emit, json_option, open_store, subgroup


def register(root: click.Group) -> None:
    grp = subgroup(root, "review", "Review workflow: draft -> proposed -> approved | rejected; approved -> revoked.")

    for action, helptext in (
        ("propose", "Propose a draft mapping for approval (engineers)."),
        ("approve", "Approve a proposed mapping (reviewers; never your own). Refused when its evidence falls "
                    "short of the approval policy (`saegov policy show`) unless an admin gives --override."),
        ("reject", "Reject a proposed mapping (reviewers)."),
        ("revoke", "Revoke an approved mapping; published blocklists holding it become revoked."),
    ):
        grp.command(action, help=helptext)(_make(action))


def _make(action: str):  # type: ignore[no-untyped-def]
    @click.argument("mapping_id")
    @click.option("--justification", "-j", default=None, help="Why (required).")
    @actor_option
    @json_option
    def cmd(mapping_id: str, justification: str | None, actor: str | None, as_json: bool,
            override: str | None = None) -> None:
        rec = open_store().review(mapping_id, action, actor, justification, override=override)
        if as_json:
            emit(rec, True)
        else:
            click.echo(f"mapping {rec.id} ({rec.concept}) is now {rec.state}"
                       + (" (approval policy overridden)" if override else ""))

    if action == "approve":
        cmd = click.option("--override", default=None, metavar="JUSTIFICATION",
                           help="Admins: approve although the evidence falls short of the approval policy "
                                "(recorded with the shortfalls in the audit log).")(cmd)
    return cmd
