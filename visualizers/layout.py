"""Layout every step plot shares: the legend sits under the x-axis title, never on top of it."""

LEGEND_BELOW = dict(orientation="h", y=-0.35)
BOTTOM = 90          # px under the plot area: the axis title and one row of legend


def margins(left: int = 50, right: int = 50, top: int = 40) -> dict:
    return dict(l=left, r=right, t=top, b=BOTTOM)
