"""The assignments an instructor can hand out, by name."""
from __future__ import annotations

from minibert.assignments import backprop, blocks, kernel, losses_and_adamw, masking
from minibert.assignments.base import Assignment

ASSIGNMENTS = {a.name: a for a in (backprop.ASSIGNMENT, blocks.ASSIGNMENT, losses_and_adamw.ASSIGNMENT,
                                   masking.ASSIGNMENT, kernel.ASSIGNMENT)}


def get(name: str) -> Assignment:
    """The assignment called ``name``; ValueError naming the ones that exist otherwise."""
    if name not in ASSIGNMENTS:
        raise ValueError(f"unknown assignment {name!r}; choose one of: {', '.join(ASSIGNMENTS)} "
                         f"(`python -m minibert.assignments list` describes them)")
    return ASSIGNMENTS[name]
