"""`torchrun --nproc_per_node 2` collection on CPU (gloo): same shards and manifest as one process."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from governance.activations.collect import CollectConfig, collect
from governance.formats.activations import read_activation_manifest

torch.set_num_threads(1)

PROMPTS = ["a red circle", "a blue square", "a green cross in dotted style"]


def test_two_ranks_match_one_process(toy_model: Path, tmp_path: Path) -> None:  # noqa: F811
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    saegov = shutil.which("saegov", path=str(Path(sys.executable).parent))
    if torchrun is None or saegov is None:
        pytest.skip("torchrun / saegov entry points not installed in this environment")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS))
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", saegov, "activations", "collect",
         "--model", str(toy_model), "--prompts", str(prompts), "--steps", "2", "--out", str(out),
         "--prompts-per-shard", "1", "--device", "cpu"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    ddp = read_activation_manifest(out)[0]
    single = collect(CollectConfig(model=str(toy_model), hook_point="up_blocks.1.attentions.1", prompts=PROMPTS,
                                   out=tmp_path / "one", steps=2, prompts_per_shard=1))
    assert ddp.complete and ddp.n_shards == 3
    # Shard i is computed by rank i % 2 with the seeds of its prompts: byte-identical files.
    assert [s.sha256 for s in ddp.shards] == [s.sha256 for s in single.shards]
    assert ddp.model_dump(exclude={"params"}) == single.model_dump(exclude={"params"})
    assert ddp.params.comparable() == single.params.comparable()
