"""The live plot: loss and validation Dice per epoch, drawn with matplotlib's Agg canvas into PNG bytes.

No pyplot and no GUI backend, so it draws the same in Slicer and offscreen; stages 1 and 2 follow each other on
one epoch axis with a line between them.
"""

from __future__ import annotations

import io

STAGE_COLOURS = {"stage1": "#1f77b4", "stage2": "#d62728"}


def plotAvailable() -> tuple[bool, str]:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False, "The live plot needs matplotlib: Start training offers to install it."
    return True, ""


def renderHistory(history: list[dict], width: int = 520, height: int = 220, dpi: int = 100) -> bytes:
    """PNG of train / validation loss (left) and validation Dice (right) per epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    lossAxes, diceAxes = figure.subplots(1, 2)
    offset = 0
    for stage in ("stage1", "stage2"):
        records = [record for record in history if record.get("stage") == stage]
        if not records:
            continue
        epochs = [offset + record["epoch"] for record in records]
        colour, label = STAGE_COLOURS[stage], f"stage {stage[-1]}"
        lossAxes.plot(epochs, [r["train_loss"] for r in records], "-o", color=colour, ms=3, label=f"{label} train")
        lossAxes.plot(epochs, [r["val_loss"] for r in records], "--", color=colour, label=f"{label} val")
        for key, style, name in (("val_dice_liver", "-o", "liver"), ("val_dice_tumor", ":s", "tumor")):
            points = [(epoch, r[key]) for epoch, r in zip(epochs, records) if r.get(key) is not None]
            if points:
                diceAxes.plot(*zip(*points), style, color=colour, ms=3, label=f"{label} {name}")
        if offset:
            for axes in (lossAxes, diceAxes):
                axes.axvline(offset + 0.5, color="#888888", lw=0.8, ls=":")
        offset = epochs[-1]
    lossAxes.set_title("Loss", fontsize=9)
    diceAxes.set_title("Validation Dice", fontsize=9)
    diceAxes.set_ylim(0, 1)
    for axes in (lossAxes, diceAxes):
        axes.set_xlabel("epoch", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=6, loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
