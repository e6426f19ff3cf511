"""`saegov demo`: the whole product on the committed toy world, in a fresh workspace.

Each step is the real `saegov` command, run in this process (so torch and the models load
once) and printed as the user would type it.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import click

MARKER = ".saegov-demo"


def register(root: click.Group) -> None:
    root.add_command(demo)


def _run(args: list[str]) -> None:
    from cli.main import saegov

    click.secho("$ saegov " + " ".join(shlex.quote(a) for a in args), fg="cyan", err=True)
    try:
        saegov.main(args=args, prog_name="saegov", standalone_mode=False)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise click.ClickException(f"demo step failed: saegov {' '.join(args)}") from None


def _fresh_workspace(path: Path) -> None:
    if path.exists():
        if not (path / MARKER).is_file():
            raise click.ClickException(f"{path} exists and is not a demo workspace; choose another --workspace")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("created by saegov demo; removed by the next demo run\n")


@click.command("demo")
@click.option("--workspace", type=click.Path(file_okay=False, path_type=Path), default=Path(".saegov/demo"),
              show_default=True, help="Fresh workspace (a previous demo workspace there is replaced).")
@click.option("--colour", default="red", show_default=True, help="Colour concept to block.")
@click.option("--style", default="dotted", show_default=True, help="Style concept to block.")
@click.option("--top-n", type=int, default=2, show_default=True, help="Features selected per timestep.")
@click.option("--multiplier", type=float, default=-1.0, show_default=True, help="gamma of both mappings.")
def demo(workspace: Path, colour: str, style: str, top_n: int, multiplier: float) -> None:
    """Collect, train an SAE, score, review, publish, deploy, generate, evaluate, verify."""
    from governance.toyworld.evaluate import DEFAULT_GUIDANCE, DEFAULT_STEPS
    from governance.toyworld.grammar import COLOURS, STYLES, all_prompts
    from governance.toyworld.paths import default_pipeline_path, is_trained

    if colour not in COLOURS or style not in STYLES:
        raise click.ClickException(f"--colour must be one of {COLOURS}, --style one of {STYLES}")
    if not is_trained():
        raise click.ClickException(f"no trained toy world at {default_pipeline_path()}")
    t0 = time.monotonic()
    ws = workspace.resolve()
    _fresh_workspace(ws)
    os.environ["SAEGOV_HOME"] = str(ws)
    os.environ.pop("SAEGOV_DATABASE_URL", None)
    os.environ.pop("SAEGOV_ACTOR", None)
    model = str(default_pipeline_path())
    steps, guidance = str(DEFAULT_STEPS), str(DEFAULT_GUIDANCE)
    prompts_dir = ws / "prompts"
    prompts_dir.mkdir()
    prompts = all_prompts()
    # Two seeds per prompt (prompt i uses seed + i), so the SAE sees every combination twice.
    (prompts_dir / "all.txt").write_text("\n".join(p.text for p in prompts + prompts) + "\n")
    for kind, names in (("colour", COLOURS), ("style", STYLES)):
        for name in names:
            mine = [p.text for p in prompts if getattr(p, kind) == name]
            (prompts_dir / f"{name}.txt").write_text("\n".join(mine) + "\n")

    click.secho("1. Registry and people", bold=True, err=True)
    _run(["db", "upgrade"])
    _run(["actor", "add", "alice", "--role", "admin"])
    _run(["actor", "add", "erin", "--role", "engineer", "--actor", "alice"])
    _run(["actor", "add", "rob", "--role", "reviewer", "--actor", "alice"])
    for kind, names in (("colour", COLOURS), ("style", STYLES)):
        for name in names:
            _run(["concept", "add", name, "--kind", kind, "--prompts", str(prompts_dir / f"{name}.txt"), "--actor", "erin"])

    click.secho("2. Activations and SAE (tracked in MLflow)", bold=True, err=True)
    acts = ws / "activations" / "toy-up1-attn1"
    _run(["activations", "collect", "--model", model, "--hookpoint", "up_blocks.1.attentions.1",
          "--prompts", str(prompts_dir / "all.txt"), "--steps", steps, "--guidance", guidance, "--seed", "0",
          "--out", str(acts), "--batch-size", "32", "--prompts-per-shard", "64"])
    _run(["sae", "train", "--activations", str(acts), "--expansion", "16", "--k", "32", "--name", "toy-sae",
          "--actor", "erin"])

    click.secho("3. Concept scoring, review, blocklist", bold=True, err=True)
    for concept in (colour, style):
        _run(["concept", "score", concept, "--sae", "toy-sae", "--top-n", str(top_n), "--multiplier", str(multiplier),
              "--steps", steps, "--guidance", guidance, "--model", model, "--batch-size", "32", "--actor", "erin"])
    for mapping in ("1", "2"):
        _run(["review", "propose", mapping, "--justification", "demo: block on policy request", "--actor", "erin"])
        _run(["review", "approve", mapping, "--justification", "heatmap and features checked", "--actor", "rob"])
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
    report, metrics = _evaluate_and_report(ws, dep, model, [colour, style])
    _run(["audit", "verify"])
    for c, m in metrics.items():
        click.echo(f"{c:8s} UA {100 * m['UA']:5.1f}  IRA {100 * m['IRA']:5.1f}  CRA {100 * m['CRA']:5.1f}")
    click.echo(f"report: {report}")
    click.echo(f"demo finished in {time.monotonic() - t0:.0f} s (workspace {ws})")


def _evaluate_and_report(ws: Path, dep: Path, model: str, targets: list[str]) -> tuple[Path, dict[str, Any]]:
    from cli.progress import stage_progress
    from governance.enforcement import EnforcedStableDiffusionPipeline
    from governance.evaluation import eval_jobs, generate_jobs, judge, unlearning_metrics
    from governance.report import grid, write_report
    from governance.toyworld.loading import load_pipeline
    from registry.store import Store

    store = Store.open()
    base = load_pipeline(model)
    enforced = EnforcedStableDiffusionPipeline.from_pretrained(dep, store=store)
    d = enforced.saegov.manifest.payload.defaults
    jobs = eval_jobs()
    with stage_progress() as progress:
        before = generate_jobs(base, jobs, d.num_inference_steps, d.guidance_scale,
                               progress=lambda i, n: progress("before", i, n, {}))
        after = generate_jobs(enforced, jobs, d.num_inference_steps, d.guidance_scale,
                              progress=lambda i, n: progress("after", i, n, {}))
    metrics = unlearning_metrics(judge(after, jobs), targets)
    metrics_before = unlearning_metrics(judge(before, jobs), targets)
    grids = []
    for c in targets:
        kind = metrics[c]["kind"]
        idx = [i for i, (p, s) in enumerate(jobs) if getattr(p, kind) == c and s == jobs[0][1]]
        grids.append((f"prompts with '{c}'", grid([before[i] for i in idx], 8), grid([after[i] for i in idx], 8)))
    heatmaps = []
    for m in store.list_mappings():
        for ev in m.evidence:
            if ev.get("kind") == "score_heatmap" and str(ev.get("ref", "")).startswith("runs:/"):
                try:
                    heatmaps.append((f"mapping {m.id}: {m.concept}", _mlflow_bytes(ev["ref"])))
                except Exception:  # noqa: BLE001 - a missing artifact must not sink the report
                    pass
    audit = [e.to_json() for e in store.audit_events()]
    facts = {"deployment": str(dep), "blocklist": enforced.saegov.manifest.payload.blocklist,
             "built by": enforced.saegov.manifest.payload.built_by,
             "defaults": json.dumps(d.model_dump()), "images per pass": len(jobs),
             "before (no blocklist)": json.dumps({c: {k: round(v, 3) for k, v in m.items() if k in ("UA", "IRA", "CRA") and v is not None}
                                                  for c, m in metrics_before.items()})}
    path = write_report(ws / "reports" / "demo.html", title="saegov demo: toy world unlearning", metrics=metrics,
                        grids=grids, heatmaps=heatmaps, audit=audit, facts=facts)
    return path, metrics


def _mlflow_bytes(ref: str) -> bytes:
    import tempfile

    from mlflow.tracking import MlflowClient

    from governance.tracking import tracking_uri

    run_id, _, artifact = ref[len("runs:/"):].partition("/")
    with tempfile.TemporaryDirectory() as tmp:
        local = MlflowClient(tracking_uri=tracking_uri()).download_artifacts(run_id, artifact, tmp)
        return Path(local).read_bytes()
