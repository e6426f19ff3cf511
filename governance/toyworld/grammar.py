"""The toy world's concepts and its fixed prompt grammar.

Grammar (documented in docs/toyworld.md):
    styled:     "a {colour} {shape} in {style} style"
    style-free: "a {colour} {shape}"          (the neutral background: blank)

Any attribute may be left out, as in real captions: no colour word gives the neutral colour
(an uncoloured, near-black object), "shape" instead of a shape name gives the neutral shape (a
diamond), no style gives the neutral background (blank, near white). The neutral values play
the role of SD's defaults ("a dog" is a photo): removing a concept has somewhere to go that
none of the concepts' classifiers mistake for the concept.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
STYLES: tuple[str, ...] = ("plain", "striped", "dotted")

# Vocabulary: an image has three *attributes* (a ToyPrompt field and a classifier each); the
# registry files each concept under its *kind*: the shapes are the toy world's objects.
ATTRIBUTES: dict[str, tuple[str, ...]] = {"colour": COLOURS, "shape": SHAPES, "style": STYLES}
CONCEPT_KIND: dict[str, str] = {"colour": "colour", "shape": "object", "style": "style"}


NEUTRAL_SHAPE_WORD = "shape"


@dataclass(frozen=True)
class ToyPrompt:
    colour: str | None  # None: no colour word (the neutral colour)
    shape: str | None  # None: the word "shape" (the neutral shape)
    style: str | None  # None: the style-free form (the neutral background)

    @property
    def text(self) -> str:
        noun = self.shape or NEUTRAL_SHAPE_WORD
        base = f"a {self.colour} {noun}" if self.colour else f"a {noun}"
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
    style: str | None = None
    if len(words) >= 4 and words[-3] == "in" and words[-1] == "style":
        style, words = words[-2], words[:-3]
    if len(words) not in (2, 3) or words[0] != "a":
        raise ValueError(f"not a toy-world prompt: {text!r}")
    colour = words[1] if len(words) == 3 else None
    noun = words[-1]
    shape = None if noun == NEUTRAL_SHAPE_WORD else noun
    if (colour is not None and colour not in COLOURS) or (shape is not None and shape not in SHAPES) or (
        style is not None and style not in STYLES
    ):
        raise ValueError(f"unknown concept in toy-world prompt: {text!r}")
    return ToyPrompt(colour, shape, style)


def partial_prompts() -> list[ToyPrompt]:
    """Every prompt that leaves out the colour or the shape (the training grammar's rest)."""
    out: list[ToyPrompt] = []
    for colour, shape, style in product((*COLOURS, None), (*SHAPES, None), (*STYLES, None)):
        if colour is None or shape is None:
            out.append(ToyPrompt(colour, shape, style))
    return out


def vocabulary() -> list[str]:
    """Every word the grammar can produce (the tokenizer is built from these)."""
    return sorted({"a", "in", "style", NEUTRAL_SHAPE_WORD, *COLOURS, *SHAPES, *STYLES})


def attribute_of(concept: str) -> str:
    """The attribute a toy concept is a value of (colour, shape or style); KeyError if none."""
    for attribute, names in ATTRIBUTES.items():
        if concept in names:
            return attribute
    raise KeyError(concept)


def registry_kind(concept: str) -> str:
    """The registry's kind of a toy concept: colour, object (the shapes) or style."""
    return CONCEPT_KIND[attribute_of(concept)]


def is_toy_concept(concept: str) -> bool:
    return any(concept in names for names in ATTRIBUTES.values())
