"""Pictures of training runs: line and dot charts written as SVG, with the standard library only.

Every stage draws its log next to its checkpoint (out/<stage>.svg), and eval.py draws gold and
RM score against KL. A chart keeps the numbers it draws in its <g data-points="x,y ..."> groups,
so a test (or a reader) can read the values back from the picture.
"""
import math
import pathlib
from xml.sax.saxutils import escape, quoteattr

from common import write_atomically

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f")


def nice_ticks(lo, hi, n=5, integer=False):
    """About n round values (1, 2 or 5 times a power of ten apart; integer: at least 1) from at or
    below lo to at or above hi. Returns (ticks, step)."""
    if hi - lo < 1e-12:   # a flat line: give it some room
        lo, hi = lo - (abs(lo) * 0.1 or 0.5), hi + (abs(hi) * 0.1 or 0.5)
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    step = max(step, 1) if integer else step
    first = math.floor(lo / step + 1e-9) * step
    return [first + i * step for i in range(math.ceil((hi - first) / step - 1e-9) + 1)], step


def svg_chart(path, panels, width=440, height=300):
    """Write one or more charts (two per row) into one SVG file; returns path. A panel is a dict:
        title, xlabel, ylabel
        series:  [(name, [(x, y), ...], style)], style "line" (if left out), "dots" or "line+dots";
                 points whose y is None or not finite are skipped
        markers: [(x, y, label)] (optional), single points drawn as black diamonds with their
                 label."""
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{cols * width}" '
           f'height="{rows * height}" font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>']
    for n, panel in enumerate(panels):
        svg += chart_panel(panel, (n % cols) * width, (n // cols) * height, width, height)
    text = "\n".join(svg + ["</svg>"]) + "\n"
    write_atomically(path, lambda tmp: pathlib.Path(tmp).write_text(text, encoding="utf-8"))
    return path


def tick_label(value, step):
    """As many decimals as the step between ticks needs."""
    return f"{value:.{max(0, -math.floor(math.log10(step) + 1e-9))}f}"


def legend(series, left, right_edge, top):
    """One entry per series, left to right under the title, a new row when one is full.
    Returns (SVG elements, the y of the last row)."""
    out, lx, ly = [], left, top
    for i, (name, _, style) in enumerate(series):
        entry_w = 30 + 6.5 * len(name)
        if lx + entry_w > right_edge and lx > left:
            lx, ly = left, ly + 15
        c = COLORS[i % len(COLORS)]
        if "line" in style:
            out.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 18}" y2="{ly - 4}" stroke="{c}" '
                       f'stroke-width="2"/>')
        if "dots" in style:
            out.append(f'<circle cx="{lx + 9}" cy="{ly - 4}" r="3" fill="{c}"/>')
        out.append(f'<text x="{lx + 23}" y="{ly}">{escape(name)}</text>')
        lx += entry_w
    return out, ly


def chart_panel(panel, x0, y0, w, h):
    """The SVG elements of one chart whose top-left corner is (x0, y0): title, legend, axes,
    data."""
    ok = lambda v: v is not None and math.isfinite(v)
    series = [(s[0], [(x, y) for x, y in s[1] if ok(x) and ok(y)], (*s[2:], "line")[0])
              for s in panel["series"]]
    markers = list(panel.get("markers", ()))
    xs = [x for _, pts, _ in series for x, _ in pts] + [m[0] for m in markers]
    ys = [y for _, pts, _ in series for _, y in pts] + [m[1] for m in markers]
    integer_x = all(float(x).is_integer() for x in xs)
    xt, xstep = nice_ticks(min(xs, default=0), max(xs, default=1), integer=integer_x)
    yt, ystep = nice_ticks(min(ys, default=0), max(ys, default=1))
    left = x0 + 24 + 6.5 * max(len(tick_label(v, ystep)) for v in yt)   # room for the y tick labels
    out = [f'<text x="{x0 + w / 2}" y="{y0 + 18}" text-anchor="middle" font-size="13">'
           f'{escape(panel["title"])}</text>']
    entries, legend_y = legend(series, left, x0 + w - 10, y0 + 36)
    out += entries
    # the plot area and the maps from values to pixels
    right, top, bottom = x0 + w - 15, legend_y + 12, y0 + h - 42
    sx = lambda x: left + (right - left) * (x - xt[0]) / (xt[-1] - xt[0])
    sy = lambda y: bottom - (bottom - top) * (y - yt[0]) / (yt[-1] - yt[0])
    out += axes(panel, (xt, xstep, sx), (yt, ystep, sy), (left, right, top, bottom), x0, y0 + h)
    for i, (name, pts, style) in enumerate(series):
        out += data_group(name, pts, style, COLORS[i % len(COLORS)], sx, sy)
    for x, y, text in markers:
        px, py = sx(x), sy(y)
        out.append(f'<path d="M{px:.1f},{py - 5:.1f} l5,5 l-5,5 l-5,-5 z" fill="black"/>')
        # the label stays inside the chart
        tx, anchor = (px + 8, "start") if px < (left + right) / 2 else (px - 8, "end")
        out.append(f'<text x="{tx:.1f}" y="{py - 5:.1f}" text-anchor="{anchor}">'
                   f'{escape(text)}</text>')
    return out


def axes(panel, x_ticks, y_ticks, box, x0, y_end):
    """Grid lines and tick labels, the two axes and their labels."""
    (xt, xstep, sx), (yt, ystep, sy), (left, right, top, bottom) = x_ticks, y_ticks, box
    out = []
    for v in xt:
        out.append(f'<line x1="{sx(v):.1f}" y1="{top}" x2="{sx(v):.1f}" y2="{bottom + 4}" '
                   f'stroke="#ddd"/>')
        out.append(f'<text x="{sx(v):.1f}" y="{bottom + 16}" text-anchor="middle">'
                   f'{tick_label(v, xstep)}</text>')
    for v in yt:
        out.append(f'<line x1="{left - 4}" y1="{sy(v):.1f}" x2="{right}" y2="{sy(v):.1f}" '
                   f'stroke="#ddd"/>')
        out.append(f'<text x="{left - 7}" y="{sy(v) + 4:.1f}" text-anchor="end">'
                   f'{tick_label(v, ystep)}</text>')
    out.append(f'<path d="M{left},{top} V{bottom} H{right}" stroke="#333" fill="none"/>')
    out.append(f'<text x="{(left + right) / 2}" y="{y_end - 8}" text-anchor="middle">'
               f'{escape(panel["xlabel"])}</text>')
    out.append(f'<text transform="translate({x0 + 14},{(top + bottom) / 2}) rotate(-90)" '
               f'text-anchor="middle">{escape(panel["ylabel"])}</text>')
    return out


def data_group(name, pts, style, color, sx, sy):
    """One series: a <g> that keeps its values (data-points), its line and its dots."""
    values = " ".join(f"{x:.6g},{y:.6g}" for x, y in pts)
    out = [f'<g data-name={quoteattr(name)} data-points="{values}">']
    if "line" in style and len(pts) > 1:
        xy = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{xy}" fill="none" stroke="{color}" stroke-width="1.5"/>')
    if "dots" in style or len(pts) == 1:   # a line of one point is a dot
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>'
                for x, y in pts]
    out.append("</g>")
    return out
