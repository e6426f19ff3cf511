"""Progress reporting for long commands: a rich bar on a terminal, periodic lines in a log."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

StageProgress = Callable[[str, int, int, dict[str, float]], None]


@contextmanager
def stage_progress(log_every_s: float = 15.0) -> Iterator[StageProgress]:
    """Yields progress(stage, step, total, metrics). Output goes to stderr, never stdout."""
    console = Console(stderr=True)
    if console.is_terminal:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console,
        ) as bar:
            tasks: dict[str, int] = {}

            def update(stage: str, step: int, total: int, metrics: dict[str, float]) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total, info="")
                info = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                bar.update(tasks[stage], completed=step, total=total, info=info)

            yield update
        return
    last: dict[str, float] = {}

    def log(stage: str, step: int, total: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if step >= total or now - last.get(stage, 0.0) >= log_every_s:
            last[stage] = now
            info = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            print(f"{stage} {step}/{total} {info}", file=sys.stderr, flush=True)

    yield log
