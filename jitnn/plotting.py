"""Training curves as a picture: :func:`plot_history` (needs matplotlib, the ``plot`` extra)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["plot_history"]


def plot_history(result: Any, path: str | os.PathLike[str], *, title: str | None = None) -> None:
    """Draw the per-epoch metrics of a :func:`jitnn.fit` result and save them as a PNG.

    One panel for the losses (``loss`` and ``val_loss``) and one per other metric
    (``val_accuracy``...), epochs on the horizontal axis (1-based). ``result`` is a
    :class:`jitnn.FitResult` or its ``metrics`` mapping. The picture is written to ``path``
    (the format follows its suffix; ``.png`` by convention) with matplotlib's
    non-interactive Agg backend, so it works without a display.

    Raises
    ------
    ImportError
        matplotlib is not installed (``pip install jitnn[plot]``).
    TypeError
        ``result`` is neither a FitResult nor a mapping of names to per-epoch values, or
        ``path`` is not a str or PathLike.
    ValueError
        There is nothing to draw (no epoch ran).
    """
    metrics = getattr(result, "metrics", result)
    if not hasattr(metrics, "items") or not all(isinstance(name, str) for name in metrics):
        raise TypeError(f"plot_history: result must be a jitnn.FitResult or its metrics mapping, got {type(result).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"plot_history: path must be a str or os.PathLike, got {type(path).__name__}")
    curves = {name: [float(v) for v in values] for name, values in metrics.items() if len(values)}
    if not curves:
        raise ValueError("plot_history: the result holds no epoch to draw")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plot_history needs matplotlib: pip install 'jitnn[plot]' (or matplotlib)") from None
    losses = [name for name in curves if name.endswith("loss")]
    others = sorted({name.removeprefix("val_") for name in curves if name not in losses})
    panels = [losses] * bool(losses) + [[name for name in (other, f"val_{other}") if name in curves] for other in others]
    figure = Figure(figsize=(5 * len(panels), 3.6), layout="constrained")  # no pyplot: no global state, no display
    for axes, names in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for name in names:
            values = curves[name]
            axes.plot(range(1, len(values) + 1), values, marker="o" if len(values) < 30 else None, label=name)
        axes.set_xlabel("epoch")
        axes.set_title(names[0].removeprefix("val_") if names is not losses else "loss")
        axes.grid(alpha=0.3)
        axes.legend()
    if title:
        figure.suptitle(title)
    figure.savefig(os.fspath(path), dpi=100)
