"""`saegov policy set|show`: the approval policy (registry.policy), versioned and audited."""
from __future__ import annotations

import click

from cli.common import actor_option, json_option, open_store, print_json, subgroup


def _percent(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    if not 0 <= value <= 100:
        raise click.BadParameter(f"expected a percentage in [0, 100], got {value:g}", param_hint=name)
    return value / 100


def register(root: click.Group) -> None:
    grp = subgroup(root, "policy", "The approval policy: minimum evidence a mapping needs to be approved.")

    @grp.command("set")
    @click.option("--min-ua", type=float, default=None, help="Minimum UA (%) of the sweep's chosen point.")
    @click.option("--min-ira", type=float, default=None, help="Minimum IRA (%).")
    @click.option("--min-cra", type=float, default=None, help="Minimum CRA (%).")
    @click.option("--require-signatures", is_flag=True, default=False,
                  help="From now on every action must be signed by its actor's registered key (`saegov key "
                       "register`): a name in SAEGOV_ACTOR or --actor is no longer enough to act as someone. "
                       "The admin setting it must have a registered key.")
    @actor_option
    @json_option
    def set_(min_ua: float | None, min_ira: float | None, min_cra: float | None, require_signatures: bool,
             actor: str | None, as_json: bool) -> None:
        """Set a new policy version (admins only; unset minimums are not constrained)."""
        policy = open_store().set_approval_policy(actor, _percent(min_ua, "--min-ua"), _percent(min_ira, "--min-ira"),
                                                  _percent(min_cra, "--min-cra"), require_signatures=require_signatures)
        if as_json:
            print_json(policy.payload())
        else:
            click.echo(f"approval policy v{policy.version}: " + _describe(policy))

    @grp.command("show")
    @json_option
    def show(as_json: bool) -> None:
        """The policy in force (sanity rules always apply)."""
        policy = open_store().approval_policy()
        if as_json:
            print_json(policy.payload() if policy else None)
        elif policy is None:
            click.echo("no approval policy: only the sanity rules apply (a feature selected, scales below 1, "
                       "finite gates)")
        else:
            click.echo(f"approval policy v{policy.version}: " + _describe(policy))


def _describe(policy) -> str:  # noqa: ANN001
    mins = policy.minimums()
    text = ", ".join(f"{k} >= {100 * v:g} %" for k, v in mins.items()) or "no minimums (sanity rules only)"
    return text + ("; every action signed by its actor's registered key" if policy.require_signatures else "")
