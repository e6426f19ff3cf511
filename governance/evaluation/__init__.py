"""Evaluation on the toy world: UA / IRA / CRA (`metrics`), a deployment's evaluation with its
report (`deployment`, `report`) and prompt attacks (`attack`)."""
from __future__ import annotations

from governance.evaluation.deployment import EvalError, evaluate_deployment
from governance.evaluation.metrics import EVAL_SEEDS, eval_jobs, unlearning_metrics

__all__ = ["EVAL_SEEDS", "EvalError", "eval_jobs", "evaluate_deployment", "unlearning_metrics"]
