"""`saegov demo`: the whole product on the committed toy world, in a fresh workspace.

Each step is the real `saegov` command, run in this process (so torch and the models load
once) and printed as the user would type it.
"""
from __future__ import annotations

import os
import shlex
import shutil
import time
from pathlib import Path

import click

from governance.common.errors import UsageError
from governance.common.workspace import (
    ENV_ACTOR, ENV_CONFIG_DIR, ENV_DATABASE_URL, ENV_HOME, ENV_MLFLOW_URI, ENV_TRUSTED_KEYS,
)

MARKER = ".saegov-demo"
# The demo's defaults: each kind at the block where the toy world keeps it (docs/evaluation.md,
# "Where each kind lives"), the reference k, and a small sweep grid per kind.
COLOUR_HOOKPOINT = "up_blocks.1.attentions.2"
STYLE_HOOKPOINT = "up_blocks.1.attentions.1"
DEMO_K = "32"
DEMO_TOP_NS = "1,2,4"
# -30 beside the paper's colour gammas: on the styled sweep images one feature per timestep
# removes red only at -30, four already at -5 (docs/evaluation.md, stop 28).
DEMO_MULTIPLIERS = "-5,-10,-30"
# Styles need more features and stronger scales at their block (docs/evaluation.md, stop 9's grid).
STYLE_TOP_NS = "4,8,16"
STYLE_MULTIPLIERS = "-5,-10,-20"
# The assigned rule (a concept-supervised SAE's dedicated latent) sweeps gamma only; the colours'
# finer grid of docs/evaluation.md (stop 29), whose chosen points sit between -2 and -10.
SUPERVISED_MULTIPLIERS = "-2,-3,-4,-5,-6,-8,-10,-20"
# % of a sweep's chosen point, and of the deployment's evaluation at promotion. Judged with the
# strict shape rule (stop 25), the demo's blocklist keeps the other kinds in 68-69 % of the
# blocked concepts' images (stop 28) and the other concepts of their kind in 98 %: the floors sit below that, so
# the demo shows the gate passing; a blocklist that wrecks more is refused.
DEMO_POLICY = {"UA": "25", "IRA": "75", "CRA": "45"}


def register(root: click.Group) -> None:
    root.add_command(demo)


_people: Path | None = None  # the demo's people's config folders: one per person, never the workspace's own


def _person(name: str) -> None:
    """Sit at `name`'s desk: their config folder, so their key signs what they do."""
    if _people is not None:
        os.environ[ENV_CONFIG_DIR] = str(_people / name)


def _public_key(name: str) -> str:
    from governance.enforcement import signing

    _person(name)
    return signing.public_hex(signing.load_or_create_key())


def _run(args: list[str]) -> None:
    from cli.main import saegov

    # Whoever --actor names runs the step at their own desk; read-only steps run at erin's.
    _person(args[args.index("--actor") + 1] if "--actor" in args else "erin")
    click.secho("$ saegov " + " ".join(shlex.quote(a) for a in args), fg="cyan", err=True)
    try:
        saegov.main(args=args, prog_name="saegov", standalone_mode=False)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise  # the step printed its one-line error; the demo stops with its exit code


def _fresh_workspace(path: Path) -> None:
    if path.exists():
        if not (path / MARKER).is_file():
            raise UsageError(f"{path} exists and is not a demo workspace; choose another --workspace")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("created by saegov demo; removed by the next demo run\n")


@click.command("demo")
@click.option("--workspace", type=click.Path(file_okay=False, path_type=Path), default=Path(".saegov/demo"),
              show_default=True, help="Fresh workspace (a previous demo workspace there is replaced).")
@click.option("--colour", default="red", show_default=True, help="Colour concept to block.")
@click.option("--style", default="dotted", show_default=True, help="Style concept to block.")
@click.option("--colour-hookpoint", default=COLOUR_HOOKPOINT, show_default=True, help="UNet block of the colour SAE.")
@click.option("--style-hookpoint", default=STYLE_HOOKPOINT, show_default=True, help="UNet block of the style SAE.")
@click.option("--top-ns", default=DEMO_TOP_NS, show_default=True, help="Colour sweep: features per timestep.")
@click.option("--multipliers", default=DEMO_MULTIPLIERS, show_default=True, help="Colour sweep: gammas.")
@click.option("--style-top-ns", default=STYLE_TOP_NS, show_default=True, help="Style sweep: features per timestep.")
@click.option("--style-multipliers", default=STYLE_MULTIPLIERS, show_default=True, help="Style sweep: gammas.")
@click.option("--styled-sweep/--style-free-sweep", default=True, show_default=True,
              help="Sweep the colour on the styled wording that evaluation and most prompts use "
                   "(concept sweep --styled-sweep; the style always is).")
@click.option("--two-block-colour/--one-block-colour", default=False, show_default=True,
              help="Also block the colour at the style's block, swept with its first mapping in force "
                   "(concept sweep --with-mapping).")
@click.option("--colour-method", type=click.Choice(["paper", "supervised"]), default="paper", show_default=True,
              help="paper: the SAeUron score's features; supervised: an SAE trained with a dedicated latent per "
                   "colour (sae train --supervise), blocked by its latent (concept sweep --assigned).")
@click.option("--style-method", type=click.Choice(["paper", "supervised"]), default="paper", show_default=True,
              help="The same choice for the style.")
@click.option("--supervised-multipliers", default=SUPERVISED_MULTIPLIERS, show_default=True,
              help="Gammas swept for a supervised kind.")
def demo(workspace: Path, colour: str, style: str, colour_hookpoint: str, style_hookpoint: str, top_ns: str,
         multipliers: str, style_top_ns: str, style_multipliers: str, styled_sweep: bool,
         two_block_colour: bool, colour_method: str, style_method: str, supervised_multipliers: str) -> None:
    """Collect and train an SAE at each concept's block, sweep both (with --two-block-colour the
    colour also at the style's block, measured with its first mapping in force), review, publish
    one blocklist holding both SAEs, deploy, generate, evaluate, promote to production, verify."""
    from governance.formats.prompts import write_prompts
    from governance.toyworld.loading import ToyWorldMissing
    from governance.toyworld.quality import DEFAULT_GUIDANCE, DEFAULT_STEPS
    from governance.toyworld.grammar import COLOURS, STYLES, all_prompts
    from governance.toyworld.paths import default_pipeline_path, is_trained

    if colour not in COLOURS or style not in STYLES:
        raise UsageError(f"--colour must be one of {COLOURS}, --style one of {STYLES}")
    from cli.common import number_list

    # The grids are checked here, not minutes later when their sweep starts.
    for value, name, cast in ((top_ns, "--top-ns", int), (style_top_ns, "--style-top-ns", int),
                              (multipliers, "--multipliers", float), (style_multipliers, "--style-multipliers", float),
                              (supervised_multipliers, "--supervised-multipliers", float)):
        if not number_list(value, name, cast):
            raise UsageError(f"{name} needs at least one number")
    if two_block_colour and colour_method == "supervised":
        raise UsageError("--two-block-colour sweeps the paper's features at the style's block; "
                         "use it with --colour-method paper")
    if not is_trained():
        raise ToyWorldMissing(f"no trained toy world at {default_pipeline_path()}")
    t0 = time.monotonic()
    ws = workspace.resolve()
    _fresh_workspace(ws)
    os.environ[ENV_HOME] = str(ws)
    for name in (ENV_DATABASE_URL, ENV_ACTOR, ENV_MLFLOW_URI, ENV_TRUSTED_KEYS):
        os.environ.pop(name, None)
    # The demo plays three people on one machine, each with a signing key in their own config
    # folder (a real one is ~/.config/saegov, never the workspace).
    global _people
    _people = ws / "people"
    model = str(default_pipeline_path())
    steps, guidance = str(DEFAULT_STEPS), str(DEFAULT_GUIDANCE)
    prompts_dir = ws / "prompts"
    prompts_dir.mkdir()
    prompts = all_prompts()
    # Two seeds per prompt (prompt i uses seed + i), so the SAE sees every combination twice.
    write_prompts(prompts_dir / "all.txt", [p.text for p in prompts + prompts])
    for kind, names in (("colour", COLOURS), ("style", STYLES)):
        for name in names:
            mine = [p.text for p in prompts if getattr(p, kind) == name]
            write_prompts(prompts_dir / f"{name}.txt", mine)

    click.secho("1. Registry and people", bold=True, err=True)
    _run(["db", "upgrade"])
    _run(["actor", "add", "alice", "--role", "admin"])
    _run(["actor", "add", "erin", "--role", "engineer", "--actor", "alice"])
    _run(["actor", "add", "rob", "--role", "reviewer", "--actor", "alice"])
    _run(["key", "show"])  # each person prints their public key; the admin registers them
    for person in ("alice", "erin", "rob"):
        _run(["key", "register", person, "--public-key", _public_key(person), "--actor", "alice"])
    # The policy team's floor for any approval: a mapping whose sweep removed nothing (UA 0) or
    # wrecked the other concepts cannot be approved without an admin's recorded override. From
    # here on every action is signed by its actor's key: a name in SAEGOV_ACTOR is not enough.
    _run(["policy", "set", "--min-ua", DEMO_POLICY["UA"], "--min-ira", DEMO_POLICY["IRA"], "--min-cra",
          DEMO_POLICY["CRA"], "--require-signatures", "--actor", "alice"])
    for kind, names in (("colour", COLOURS), ("style", STYLES)):
        for name in names:
            _run(["concept", "add", name, "--kind", kind, "--prompts", str(prompts_dir / f"{name}.txt"), "--actor", "erin"])

    click.secho("2. Activations and an SAE per hook point (tracked in MLflow)", bold=True, err=True)
    saes = {colour: ("toy-sae-colour", colour_hookpoint), style: ("toy-sae-style", style_hookpoint)}
    if colour_hookpoint == style_hookpoint:  # one block: one SAE serves both
        saes = {colour: ("toy-sae", colour_hookpoint), style: ("toy-sae", colour_hookpoint)}
    # A supervised kind gives every concept of its kind a dedicated latent: the labels are the
    # prompts registered above, and the SAE's lineage names them.
    supervised = {colour: COLOURS if colour_method == "supervised" else (),
                  style: STYLES if style_method == "supervised" else ()}
    for sae_name, hookpoint in dict.fromkeys(saes.values()):
        acts = ws / "activations" / hookpoint.replace(".", "-")
        _run(["activations", "collect", "--model", model, "--hookpoint", hookpoint,
              "--prompts", str(prompts_dir / "all.txt"), "--steps", steps, "--guidance", guidance, "--seed", "0",
              "--out", str(acts), "--batch-size", "32", "--prompts-per-shard", "64"])
        labels = [n for c, (s, _) in saes.items() if s == sae_name for n in supervised[c]]
        supervise = ["--supervise", ",".join(labels)] if labels else []
        _run(["sae", "train", "--activations", str(acts), "--expansion", "16", "--k", DEMO_K, "--name", sae_name,
              *supervise, "--actor", "erin"])

    click.secho("3. Operating-point sweep at each concept's block, review, blocklist", bold=True, err=True)
    def grid(concept: str, grid_top_ns: str, grid_multipliers: str) -> list[str]:
        if supervised[concept]:
            return ["--assigned", "--multipliers", supervised_multipliers]
        return ["--top-ns", grid_top_ns, "--multipliers", grid_multipliers]

    grids = {colour: grid(colour, top_ns, multipliers), style: grid(style, style_top_ns, style_multipliers)}
    # The colour's sweep on the styled wording: its four style-free target images per point
    # chose points that evaluation, on the styled prompts, did not confirm (docs/evaluation.md,
    # stop 28: red's chosen UA 100 evaluated at 45.8 through the two-block default it replaced).
    styled = ["--styled-sweep"] if styled_sweep else []
    sweeps = [(colour, saes[colour][0], grids[colour], styled), (style, saes[style][0], grids[style], [])]
    if two_block_colour and colour_hookpoint != style_hookpoint:
        # The colour again at the style's block (its SAE), measured with mapping 1 in force.
        sweeps.append((colour, saes[style][0], grids[colour], [*styled, "--with-mapping", "1"]))
    for concept, sae_name, points, extra in sweeps:
        _run(["concept", "sweep", concept, "--sae", sae_name, *points, "--steps", steps, "--guidance", guidance,
              "--model", model, "--batch-size", "32", *extra, "--actor", "erin"])
    mappings = [str(i) for i in range(1, len(sweeps) + 1)]
    for mapping in mappings:
        _run(["review", "propose", mapping, "--justification", "demo: block on policy request", "--actor", "erin"])
        _run(["review", "approve", mapping, "--justification", "sweep table and heatmap checked", "--actor", "rob"])
    _run(["blocklist", "create", "demo", *(x for m in mappings for x in ("--mapping", m)), "--actor", "erin"])
    _run(["blocklist", "publish", "demo", "--actor", "erin"])

    click.secho("4. Deployment, generation with traces", bold=True, err=True)
    dep = ws / "deployments" / "demo"
    _run(["deploy", "build", "--blocklist", "demo@1", "--model", model, "--out", str(dep), "--actor", "erin"])
    _run(["deploy", "verify", str(dep)])
    img = ws / "images" / f"{colour}-after.png"
    _run(["generate", "--deployment", str(dep), f"a {colour} circle in {style} style", "--seed", "0", "--out", str(img),
          "--trace", str(img.with_suffix(".json")), "--record", "--actor", "erin"])
    _run(["audit", "explain", str(img)])

    click.secho("5. Evaluation (UA / IRA / CRA) and report", bold=True, err=True)
    report = ws / "reports" / "demo.html"
    _run(["eval", "--deployment", str(dep), "--report", str(report), "--actor", "rob"])
    click.secho("6. Promotion: the evaluated deployment becomes production (MLflow alias)", bold=True, err=True)
    _run(["deploy", "promote", "1", "--actor", "erin"])
    _run(["deploy", "status"])
    _run(["audit", "verify"])
    click.echo(f"report: {report}")
    click.echo(f"demo finished in {time.monotonic() - t0:.0f} s (workspace {ws})")
