"""Everything that touches tensors and models, one subpackage per stage of the flow
(docs/architecture.md draws it):

    common/       shared helpers, torch-free: errors, canonical JSON, sha256, UTC time, workspace
    formats/      every file and JSON artefact: a versioned pydantic model, its reader and writer
    basemodel/    loading a Stable Diffusion pipeline, its content hash, named hooks on its UNet
    activations/  collecting a hook point's activations into a sharded dataset
    sae/          the TopK SAE, its trainer, and `sae train` (MLflow + registry)
    scoring/      concept statistics, the paper's score and selection, the sweep, heatmaps
    enforcement/  the intervention, deployments (build, sign, verify), the enforced pipeline,
                  generation with traces, `audit explain`
    evaluation/   UA / IRA / CRA, deployment evaluation, prompt attacks, the HTML report
    toyworld/     the project's own text-to-image world with exactly known concepts
    tracking/     MLflow conventions

Each subpackage's `__init__` names its public API; importing this package imports nothing.
"""
