"""Prompt files (`concept add --prompts`, `activations collect --prompts`).

Either a JSON list (detected by a `.json` suffix or a leading `[`) whose items are strings or
objects with a "prompt" string (as `saegov toyworld prompts --json` prints), or text with one
prompt per line, where blank lines and lines starting with `#` are skipped.
"""
from __future__ import annotations

import json
from pathlib import Path

from governance.common.errors import FormatError


def read_prompts(path: Path) -> list[str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: cannot read prompts ({getattr(exc, 'strerror', None) or exc})") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FormatError(f"{path}: malformed JSON ({exc})") from None
        if not isinstance(data, list):
            raise FormatError(f"{path}: expected a JSON list of prompts")
        items = [d["prompt"] if isinstance(d, dict) and "prompt" in d else d for d in data]
        if not all(isinstance(p, str) for p in items):
            raise FormatError(f"{path}: every entry must be a string or an object with a 'prompt' string")
        prompts = [p.strip() for p in items if p.strip()]
    else:
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise FormatError(f"{path}: no prompts")
    return prompts


def write_prompts(path: Path, prompts: list[str]) -> None:
    """One prompt per line (a prompt may not contain a newline or start with `#`)."""
    bad = [p for p in prompts if "\n" in p or p.lstrip().startswith("#") or not p.strip()]
    if bad:
        raise FormatError(f"prompt {bad[0]!r} cannot be written one per line")
    Path(path).write_text("\n".join(prompts) + "\n", encoding="utf-8")
