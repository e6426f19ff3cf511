"""The toy world's concepts and its fixed prompt grammar.

Grammar (documented in docs/toyworld.md):
    styled:     "a {colour} {shape} in {style} style"
    style-free: "a {colour} {shape}"          (background style drawn at random)
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
STYLES: tuple[str, ...] = ("plain", "striped", "dotted")

KINDS: dict[str, tuple[str, ...]] = {"colour": COLOURS, "shape": SHAPES, "style": STYLES}


@dataclass(frozen=True)
class ToyPrompt:
    colour: str
    shape: str
    style: str | None  # None: the style-free form

    @property
    def text(self) -> str:
        base = f"a {self.colour} {self.shape}"
        return base if self.style is None else f"{base} in {self.style} style"

    def as_dict(self) -> dict[str, str | None]:
        return {"prompt": self.text, "colour": self.colour, "shape": self.shape, "style": self.style}


def all_prompts(include_style_free: bool = True) -> list[ToyPrompt]:
    """Every prompt of the grammar, styled ones first, in a fixed order."""
    out = [ToyPrompt(c, s, st) for c, s, st in product(COLOURS, SHAPES, STYLES)]
    if include_style_free:
        out += [ToyPrompt(c, s, None) for c, s in product(COLOURS, SHAPES)]
    return out


def parse_prompt(text: str) -> ToyPrompt:
    """Inverse of ToyPrompt.text; raises ValueError for text outside the grammar."""
    words = text.strip().lower().split()
    if len(words) == 3 and words[0] == "a":
        prompt = ToyPrompt(words[1], words[2], None)
    elif len(words) == 6 and words[0] == "a" and words[3] == "in" and words[5] == "style":
        prompt = ToyPrompt(words[1], words[2], words[4])
    else:
        raise ValueError(f"not a toy-world prompt: {text!r}")
    if prompt.colour not in COLOURS or prompt.shape not in SHAPES or (
        prompt.style is not None and prompt.style not in STYLES
    ):
        raise ValueError(f"unknown concept in toy-world prompt: {text!r}")
    return prompt


def vocabulary() -> list[str]:
    """Every word the grammar can produce (the tokenizer is built from these)."""
    return sorted({"a", "in", "style", *COLOURS, *SHAPES, *STYLES})


def kind_of(concept: str) -> str:
    for kind, names in KINDS.items():
        if concept in names:
            return kind
    raise KeyError(concept)
