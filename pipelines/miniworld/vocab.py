"""The mini world's one vocabulary: colours, shapes, grid positions, directions and the sentence templates.

All three mini datasets (retrieval, W-TAL, grounding) and the frame-level image–caption set draw their words from
here, so a single small CLIP pre-trained on the image–caption set knows every noun and position word the video
datasets use (ARCHITECTURE §5). Static captions name colour, shape and one of 9 grid cells; the feasibility study
found the position words necessary for frame features to encode *where* the object is, which a temporal head needs
to infer direction (reference/miniworld-feasibility.md). Temporal words ("moves", "then", ...) appear only in video
captions and grounding queries, never in the image–caption set.
"""

from __future__ import annotations

import itertools

#: saturated RGB colours, far apart from each other and from the dark background (every channel of the
#: background stays below ~70, and each colour has one channel of at least 200)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 45, 45),
    "green": (45, 205, 70),
    "blue": (60, 105, 245),
    "yellow": (240, 215, 40),
    "purple": (175, 65, 225),
    "white": (240, 240, 240),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

#: 3×3 grid cells, row-major from the top left; the phrase is what a caption says after "at the"
CELLS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)

#: image-plane unit vectors (x to the right, y downwards, as in the frame array)
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
OPPOSITE: dict[str, str] = {"left": "right", "right": "left", "up": "down", "down": "up"}

#: the 12 ordered pairs of distinct directions (retrieval action classes), in a fixed order
DIRECTION_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (a, b) for a, b in itertools.product(DIRECTIONS, DIRECTIONS) if a != b
)

#: words that carry time or motion; they never occur in the static image–caption set
TEMPORAL_WORDS: frozenset[str] = frozenset(
    {"then", "moves", "moving", "move", "goes", "going", "first", "after", "before", "while", "starts", "stops"}
)

# Video caption templates for the retrieval clips (two distinct ones per clip). Every template states both
# directions in their true order, so the meaning of a caption depends on order ("left, then up" ≠ "up, then left").
RETRIEVAL_TEMPLATES: tuple[str, ...] = (
    "a {colour} {shape} moves {a}, then {b}",
    "the {colour} {shape} goes {a} and then {b}",
    "a {colour} {shape} moving {a} first, then {b}",
    "the {colour} {shape} moves {a} before going {b}",
)

# Grounding query templates: one direction, or a direction pair phrased like the retrieval captions.
QUERY_TEMPLATES_ONE: tuple[str, ...] = ("the {colour} {shape} moves {a}", "the {colour} {shape} goes {a}")
QUERY_TEMPLATES_TWO: tuple[str, ...] = (
    "the {colour} {shape} moves {a}, then {b}",
    "the {colour} {shape} goes {a} and then {b}",
)


def object_name(colour: str, shape: str) -> str:
    """'red circle': the noun phrase used in captions and as a W-TAL class name."""
    return f"{colour} {shape}"


def static_caption(objects: list[tuple[str, str, int]]) -> str:
    """Caption of a still frame from (colour, shape, cell index) triples: 'a red circle at the top left', several
    objects joined as 'a red circle at the top, a blue square at the left and a green triangle at the center'."""
    parts = [f"a {object_name(c, s)} at the {CELLS[cell]}" for c, s, cell in objects]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def pair_class(a: str, b: str) -> str:
    """Retrieval action class name of a direction pair: 'left-then-up'."""
    return f"{a}-then-{b}"


def fill(template: str, colour: str, shape: str, a: str, b: str = "") -> str:
    """Fill one of the sentence templates above."""
    return template.format(colour=colour, shape=shape, a=a, b=b)
