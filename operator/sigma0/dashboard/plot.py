"""The curve of one release: pass@1 per cycle, drawn server-side as SVG by pygal.

Why pygal: a maintained pure-Python SVG charting library with no JavaScript needed to draw, so the page has no
chart bundle to vendor and the figure is in the DOM (each point a `circle.dot` with its value in a
`desc.value`), which the browser test reads. Its tooltip script, which it would load from the web, is turned off
(`js=[]`) and its inline config script removed: the page loads nothing from outside and runs no inline script.

Series, in this order: the candidate's pass@1 on the gate suite, the incumbent's (evaluated live in the same
cycle), the promotions (the candidate's figure, only where the release moved to it), then one line per
report-only suite.
"""

from __future__ import annotations

from xml.etree import ElementTree

import pygal
from pygal.style import Style

from sigma0.dashboard.board import Release

SERIES = ("candidate", "incumbent", "promoted")
STYLE = Style(
    background="transparent",
    plot_background="#ffffff",
    colors=("#1f6feb", "#8b949e", "#2da44e", "#bf8700", "#8250df", "#cf222e"),
    font_family="system-ui, sans-serif",
    legend_font_size=13,
    label_font_size=11,
)


def curve(release: Release) -> str:
    """The release's plot as an inline <svg> element ("" when no cycle has a figure yet)."""
    cycles = release.cycles
    if not cycles:
        return ""
    chart = pygal.Line(
        js=[],
        disable_xml_declaration=True,
        width=760,
        height=300,
        style=STYLE,
        range=(0, 1),
        include_x_axis=True,
        show_legend=True,
        legend_at_bottom=True,
        legend_at_bottom_columns=3, truncate_legend=40,
        x_label_rotation=20,
        truncate_label=24,
        dots_size=4,
        allow_interruptions=True,
        value_formatter=lambda value: f"{value:.3f}",
        explicit_size=False,
        title=f"pass@1 per cycle: {release.name}",
    )
    chart.x_labels = [c.name for c in cycles]
    chart.add("candidate", [c.candidate for c in cycles])
    chart.add("incumbent", [c.incumbent for c in cycles])
    chart.add("promoted", [c.candidate if c.promoted else None for c in cycles], stroke=False, dots_size=8)
    suites = sorted({(s.suite, s.label) for c in cycles for s in c.suites})
    for suite, label in suites:
        values = [next((s.pass_at_1 for s in c.suites if s.suite == suite), None) for c in cycles]
        chart.add(f"report: {label}", values, stroke_style={"dasharray": "4, 3"})
    tree = chart.render_tree()
    for parent in tree.iter():  # pygal's config <script>: the page runs no inline script (its CSP forbids it)
        for child in [c for c in parent if c.tag == "script"]:
            parent.remove(child)
    return ElementTree.tostring(tree, encoding="unicode")
