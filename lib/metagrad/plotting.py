"""One palette for every figure of the library and the course.

Each estimator (and each meta-training method built on one) has one colour, marker and label wherever it
is drawn: `metagrad reproduce`, `metagrad maml-accuracy`, `metagrad maml-nav2d` and the notebooks. Names
are the registry's (`metagrad.estimators.valid_names()`), their prior-work aliases, and the method names
of the paper's Fig. 1d.

>>> style("taypo2")["color"] == style("ProMP-TayPO-2")["color"]
True
"""

from __future__ import annotations

from typing import Any

# Colours of matplotlib's tab10 cycle, fixed per estimator family (colour-blind-friendly order).
_FAMILIES: dict[str, tuple[str, str, str]] = {
    # family: (colour, marker, label)
    "is": ("#1f77b4", "o", "Step-wise IS (DiCE)"),
    "dr": ("#ff7f0e", "s", "Doubly robust (Loaded DiCE)"),
    "vtrace": ("#7f7f7f", "D", "Truncated DR (V-trace)"),
    "taypo1": ("#9467bd", "^", "TayPO-1 (LVC)"),
    "taypo2": ("#2ca02c", "x", "TayPO-2 (second-order)"),
    "taypo3": ("#17becf", "P", "TayPO-3"),
    "maml": ("#d62728", "v", "MAML surrogate"),
    "fomaml": ("#8c564b", "<", "First-order MAML"),
    "emaml": ("#e377c2", ">", "E-MAML"),
    "exact": ("#000000", "*", "Exact"),
}

# Aliases: prior-work names and Fig. 1d method names map to the family of the estimator they use.
_ALIASES: dict[str, str] = {
    "dice": "is",
    "loaded_dice": "dr",
    "lvc": "taypo1",
    "TRPO-MAML": "maml",
    "TRPO-FMAML": "fomaml",
    "TRPO-EMAML": "emaml",
    "TRPO-DiCE": "dr",
    "ProMP": "taypo1",
    "ProMP-TayPO-2": "taypo2",
}


#: Colours for quantities that are not estimators (a bias, a spread, a policy before adaptation, a goal): greys
#: and black, so that no estimator's colour is ever reused for something else.
OTHER: dict[str, str] = {
    "bias": "#000000",
    "spread": "#6e6e6e",
    "before": "#b4b4b4",
    "goal": "#000000",
    "reference": "#000000",
}


def style(name: str) -> dict[str, Any]:
    """`{"color", "marker", "label"}` for an estimator or method name (unknown names get grey)."""
    family = _ALIASES.get(name, name)
    colour, marker, label = _FAMILIES.get(family, ("#bcbd22", "o", name))
    if name in _ALIASES and family in _FAMILIES and not name.islower():
        label = name  # a method name (e.g. "ProMP-TayPO-2") is its own label
    return {"color": colour, "marker": marker, "label": label}


def use_course_style() -> None:
    """Matplotlib settings for readable figures on a laptop screen (notebooks and saved figures)."""
    import matplotlib as mpl

    mpl.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 150,
            "savefig.bbox": "tight",
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "legend.fontsize": 9,
            "legend.framealpha": 0.85,
            "legend.loc": "best",  # placed where it covers the fewest data points
            "axes.grid": True,
            "grid.alpha": 0.3,
        }
    )
