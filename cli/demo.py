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
from governance.common.workspace import ENV_ACTOR, ENV_DATABASE_URL, ENV_HOME, ENV_MLFLOW_URI

MARKER = ".saegov-demo"
# The demo's defaults: the hook point after which no text enters the toy UNet, the reference k,
# and a small sweep grid (measurements and their limits: docs/evaluation.md).
DEMO_HOOKPOINT = "up_blocks.1.attentions.2"
DEMO_K = "32"
DEMO_TOP_NS = "1,2,4"
DEMO_MULTIPLIERS = "-1,-5,-10"


def register(root: click.Group) -> None:
    root.add_command(demo)


def _run(args: list[str]) -> None:
    from cli.main import saegov

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
@click.option("--hookpoint", default=DEMO_HOOKPOINT, show_default=True, help="UNet block the SAE reads.")
@click.option("--top-ns", default=DEMO_TOP_NS, show_default=True, help="Sweep: features per timestep.")
@click.option("--multipliers", default=DEMO_MULTIPLIERS, show_default=True, help="Sweep: gammas.")
def demo(workspace: Path, colour: str, style: str, hookpoint: str, top_ns: str, multipliers: str) -> None:
    """Collect, train an SAE, sweep two concepts, review, publish, deploy, generate, evaluate, verify."""
    from governance.formats.prompts import write_prompts
    from governance.toyworld.loading import ToyWorldMissing
    from governance.toyworld.quality import DEFAULT_GUIDANCE, DEFAULT_STEPS
    from governance.toyworld.grammar import COLOURS, STYLES, all_prompts
    from governance.toyworld.paths import default_pipeline_path, is_trained

    if colour not in COLOURS or style not in STYLES:
        raise UsageError(f"--colour must be one of {COLOURS}, --style one of {STYLES}")
    if not is_trained():
        raise ToyWorldMissing(f"no trained toy world at {default_pipeline_path()}")
    t0 = time.monotonic()
    ws = workspace.resolve()
    _fresh_workspace(ws)
    os.environ[ENV_HOME] = str(ws)
    for name in (ENV_DATABASE_URL, ENV_ACTOR, ENV_MLFLOW_URI):
        os.environ.pop(name, None)
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
    for kind, names in (("colour", COLOURS), ("style", STYLES)):
        for name in names:
            _run(["concept", "add", name, "--kind", kind, "--prompts", str(prompts_dir / f"{name}.txt"), "--actor", "erin"])

    click.secho("2. Activations and SAE (tracked in MLflow)", bold=True, err=True)
    acts = ws / "activations" / hookpoint.replace(".", "-")
    _run(["activations", "collect", "--model", model, "--hookpoint", hookpoint,
          "--prompts", str(prompts_dir / "all.txt"), "--steps", steps, "--guidance", guidance, "--seed", "0",
          "--out", str(acts), "--batch-size", "32", "--prompts-per-shard", "64"])
    _run(["sae", "train", "--activations", str(acts), "--expansion", "16", "--k", DEMO_K, "--name", "toy-sae",
          "--actor", "erin"])

    click.secho("3. Operating-point sweep, review, blocklist", bold=True, err=True)
    for concept in (colour, style):
        _run(["concept", "sweep", concept, "--sae", "toy-sae", "--top-ns", top_ns, "--multipliers", multipliers,
              "--steps", steps, "--guidance", guidance, "--model", model, "--batch-size", "32", "--actor", "erin"])
    for mapping in ("1", "2"):
        _run(["review", "propose", mapping, "--justification", "demo: block on policy request", "--actor", "erin"])
        _run(["review", "approve", mapping, "--justification", "sweep table and heatmap checked", "--actor", "rob"])
    _run(["blocklist", "create", "demo", "--mapping", "1", "--mapping", "2", "--actor", "erin"])
    _run(["blocklist", "publish", "demo", "--actor", "erin"])

    click.secho("4. Deployment, generation with traces", bold=True, err=True)
    dep = ws / "deployments" / "demo"
    _run(["deploy", "build", "--blocklist", "demo@1", "--model", model, "--out", str(dep), "--actor", "erin"])
    _run(["deploy", "verify", str(dep)])
    img = ws / "images" / f"{colour}-after.png"
    _run(["generate", "--deployment", str(dep), f"a {colour} circle in plain style", "--seed", "0", "--out", str(img),
          "--trace", str(img.with_suffix(".json")), "--record", "--actor", "erin"])
    _run(["audit", "explain", str(img)])

    click.secho("5. Evaluation (UA / IRA / CRA) and report", bold=True, err=True)
    report = ws / "reports" / "demo.html"
    _run(["eval", "--deployment", str(dep), "--report", str(report)])
    _run(["audit", "verify"])
    click.echo(f"report: {report}")
    click.echo(f"demo finished in {time.monotonic() - t0:.0f} s (workspace {ws})")
