"""The SVG charts every stage draws (plot.py): the values can be read back, the ticks are round."""
import math
import xml.etree.ElementTree as ET

import pytest

import plot
from conftest import SVG, read_chart


def test_svg_chart_holds_the_values_legend_ticks_and_markers(tmp_path):
    train = [(10 * i, 5.0 / (i + 1)) for i in range(20)]
    kl = [(0.5 * i, 0.6 + 0.01 * i) for i in range(8)]
    plot.svg_chart(str(tmp_path / "c.svg"), [
        {"title": "loss", "xlabel": "step", "ylabel": "loss (nats)",
         "series": [("train <loss>", train), ("val", [(0, 5.0), (100, float("nan")), (190, 0.4)], "line+dots")]},
        {"title": "gold vs KL", "xlabel": "KL", "ylabel": "gold", "series": [("ppo", kl, "dots"), ("none", [(1, None)])],
         "markers": [(0.0, 0.55, "SFT")]}])
    series, texts = read_chart(tmp_path / "c.svg")
    flat = lambda points: [v for point in points for v in point]
    assert flat(series["train <loss>"]) == pytest.approx(flat(train), rel=1e-5)   # 6 significant digits
    assert flat(series["ppo"]) == pytest.approx(flat(kl), rel=1e-5)
    assert series["val"] == [(0, 5.0), (190, 0.4)] and series["none"] == []   # nan and None are left out
    for text in ("loss", "step", "loss (nats)", "train <loss>", "val", "gold vs KL", "KL", "gold", "ppo", "SFT"):
        assert text in texts, text
    assert {"0", "50", "200", "4", "0.55", "0.70"} <= set(texts)   # round ticks that cover the data
    dots = [len(g.findall(SVG + "circle")) for g in ET.parse(tmp_path / "c.svg").getroot().iter(SVG + "g")]
    assert dots == [0, 2, 8, 0]   # a dot per point of the "dots" series, none for plain lines


@pytest.mark.parametrize("lo, hi", [(0, 1), (0.013, 0.057), (-3.2, 41), (5, 5), (0, 0), (550, 550.0001)])
def test_nice_ticks_are_round_and_cover_the_range(lo, hi):
    ticks, step = plot.nice_ticks(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi and 3 <= len(ticks) <= 12
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-9
