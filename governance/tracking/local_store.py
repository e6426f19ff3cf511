"""The workspace's own MLflow store (sqlite + `mlartifacts/`) kept relocatable.

MLflow records artifact locations as absolute `file://` URIs, so a copied or moved workspace
would read its artifacts from the original folder and write new ones into it. The workspace
remembers the root it last used (`.mlflow-root`); when it finds itself somewhere else, it rewrites
that prefix in MLflow's own tables, once, before MLflow opens the store.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

MARKER = ".mlflow-root"
ARTIFACTS = "mlartifacts"
# (table, column) pairs holding artifact URIs, across MLflow 2 and 3; missing ones are skipped.
COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("model_versions", "source"),
           ("model_versions", "storage_location"), ("logged_models", "artifact_location"))


def artifact_root(home: Path) -> str:
    return (home.resolve() / ARTIFACTS).as_uri()


def rebase_if_moved(home: Path) -> str | None:
    """Rewrite the recorded artifact root of `home/mlflow.db` when the workspace moved; returns
    the old root when it did."""
    home = home.resolve()
    db, marker, now = home / "mlflow.db", home / MARKER, artifact_root(home)
    if not db.is_file():
        marker.write_text(now + "\n")
        return None
    old = marker.read_text().strip() if marker.is_file() else _root_in(db)
    if not old or old == now:
        if not marker.is_file():
            marker.write_text(now + "\n")
        return None
    if db.is_symlink() or db.stat().st_nlink > 1:
        # A store shared with another workspace: rewriting it would point that one at this one's artifacts.
        from governance.common.errors import GovernanceError

        raise GovernanceError(f"{db} is a link to another workspace's MLflow store; copy the file instead of linking it")
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column in COLUMNS:
            if table not in tables:
                continue
            if column not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
                continue
            # The root itself or below it: `/a/mlartifacts` must not rewrite `/a/mlartifacts2/...`.
            conn.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                         f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                         (now, len(old) + 1, old, len(old) + 1, old + "/"))
    marker.write_text(now + "\n")
    return old


def _root_in(db: Path) -> str | None:
    """A store made before the marker: the root its experiments were created with."""
    try:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT artifact_location FROM experiments").fetchall()
    except sqlite3.Error:
        return None
    roots = set()
    for (loc,) in rows:
        if loc and f"/{ARTIFACTS}/" in f"{loc}/":
            roots.add(loc[: f"{loc}/".index(f"/{ARTIFACTS}/") + len(ARTIFACTS) + 1])
    # One root, or no guess: a store whose experiments live under several roots is left alone.
    return roots.pop() if len(roots) == 1 else None
