"""Page assembly: one self-contained HTML file with plotly.js embedded once and every figure as JSON.

Nothing is fetched from the network: the page works from file:// on a machine with no connection.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import plotly.graph_objects as go

from asyncbatch_prof.errors import AbprofError

CSS = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1500px;padding:16px 24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:4px 0}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:13px;margin:4px 0}.sub{color:#666;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{background:white;border:1px solid #ddd;border-radius:6px;
padding:8px 12px;min-width:150px;flex:0 1 180px}.card .label{font-size:12px;color:#555}
.card .value{font-size:24px;font-weight:600;margin:2px 0}.card .note{font-size:11px;color:#777}
.card.absent .value{color:#999;font-style:italic;font-size:18px}.card.absent{background:#f4f4f4}
.pair{display:flex;gap:10px}.banner{background:#fff3cd;border:1px solid #e0c36a;padding:8px;border-radius:4px}
.fig{background:white;border:1px solid #ddd;border-radius:6px;margin:10px 0;min-height:40px}
.fig-absent{padding:14px;color:#777;font-style:italic}
.grid{display:grid;gap:10px}.grid>div{min-width:0}
.cfgs{display:flex;flex-wrap:wrap;gap:12px}.cfg table{border-collapse:collapse;font-size:12px;background:white}
.cfg th,.cfg td{border:1px solid #e3e3e3;padding:2px 6px;text-align:left;vertical-align:top;max-width:520px;
overflow-wrap:anywhere}td.absent{color:#999;font-style:italic}
table.deltas{border-collapse:collapse;background:white;font-size:13px}table.deltas th,table.deltas td{
border:1px solid #e3e3e3;padding:3px 8px;text-align:right}table.deltas td:first-child{text-align:left}
.better{color:#1b7a1b;font-weight:600}.worse{color:#b71c1c;font-weight:600}.same{color:#666}.noise{color:#666;font-style:italic}.neutral{color:#8a6d00;font-weight:600}.verdict{font-size:1.05em;font-weight:600}
code{font-size:11px}
"""

# Figures are drawn after load, from JSON blocks: JSON.parse is fast, and one loop keeps the page's
# own script short. Errors go to the console so the browser test sees them. A page that loads plotly.js
# from elsewhere (--plotly-js) says so in each figure's place when it did not arrive, instead of empty boxes.
BOOT = """
window.addEventListener('load', function () {
  var loaded = performance.now();
  if (typeof Plotly === 'undefined') {
    var src = (document.querySelector('script[src]') || {}).src || 'its source';
    document.querySelectorAll('div.plot').forEach(function (div) {
      div.className = 'fig fig-absent';
      div.textContent = 'This chart needs plotly.js, which did not load from ' + src + ' (offline, or the file ' +
        'is missing). Re-render the page with `abprof report RUN` to embed plotly.js and view it offline.';
    });
    document.body.dataset.plotlyMissing = 'yes';
    document.body.dataset.rendered = 'no';
    return;
  }
  document.querySelectorAll('script.fig-data').forEach(function (node) {
    var spec = JSON.parse(node.textContent);
    Plotly.newPlot(node.dataset.target, spec.data, spec.layout,
                   {responsive: true, displaylogo: false, scrollZoom: false});
  });
  document.body.dataset.loadMs = loaded.toFixed(1);
  document.body.dataset.renderedMs = performance.now().toFixed(1);
  document.body.dataset.rendered = 'yes';
});
"""


@dataclass(slots=True)
class FigureSlot:
    """A figure of the page, or the reason it could not be drawn (shown in its place, never an empty plot)."""

    kind: str
    title: str
    figure: go.Figure | None
    absent: str | None = None


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """plotly.js, minified, from the installed plotly package (no CDN)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def plotly_cdn_url() -> str:
    """plotly's CDN address of the plotly.js version the installed plotly package embeds."""
    from plotly.offline import get_plotlyjs_version

    return f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"


def is_local_src(src: str | None) -> bool:
    """Whether a ``--plotly-js`` value names a file beside the page (not a URL, not ``cdn``, not embedded)."""
    return bool(src) and src != "cdn" and "://" not in src and not src.startswith("//")


def provide_plotly_js(page_path, src: str | None) -> str | None:
    """Make a page's local ``--plotly-js`` file exist: write the installed plotly.js there when it is missing.

    ``src`` is resolved against the page's folder, as the browser will. Returns what was done (a line for the
    user) or None; raises ``AbprofError`` when a file of that name exists but is not plotly.js.
    """
    if not is_local_src(src):
        return None
    target = (Path(page_path).parent / src).resolve()
    if target.is_file():
        with open(target, "rb") as f:
            head = f.read(4096)
        if b"plotly" not in head.lower():
            raise AbprofError(f"--plotly-js {src}: {target} exists but is not plotly.js")
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    tmp.write_text(plotly_js(), encoding="utf-8")
    tmp.chmod(0o644)
    tmp.replace(target)
    return f"wrote plotly.js ({len(plotly_js()) / 1e6:.1f} MB) to {target}, which the page loads"


def _safe_json(fig: go.Figure) -> str:
    # "</" inside a kernel name would end the script element early
    return fig.to_json().replace("</", "<\\/")


class Page:
    """Collects HTML parts and figures, then renders one self-contained document."""

    def __init__(self, title: str, plotly_src: str | None = None) -> None:
        """``plotly_src``: load plotly.js from this URL or relative path instead of embedding it; ``"cdn"``
        is plotly's CDN copy of the installed plotly.js version (as plotly's ``include_plotlyjs="cdn"``)."""
        self.title = title
        self.plotly_src = plotly_cdn_url() if plotly_src == "cdn" else plotly_src
        self.parts: list[str] = []
        self._count = 0

    def add(self, markup: str) -> None:
        """Append raw HTML (already escaped by the caller)."""
        self.parts.append(markup)

    def figure(self, slot: FigureSlot) -> str:
        """HTML for one figure slot: a plot div plus its JSON, or the absent reason in its place."""
        self._count += 1
        fig_id = f"fig-{self._count}"
        if slot.figure is None:
            reason = html.escape(slot.absent or "no data")
            return (f'<div class="fig fig-absent" data-figure="{slot.kind}" data-absent="{reason}">'
                    f"{html.escape(slot.title)}: absent ({reason})</div>")
        return (f'<div class="fig plot" id="{fig_id}" data-figure="{slot.kind}"></div>'
                f'<script type="application/json" class="fig-data" data-target="{fig_id}">{_safe_json(slot.figure)}</script>')

    def render(self) -> str:
        """The whole HTML document as a string."""
        return (
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style>"
            + (f'<script src="{html.escape(self.plotly_src)}"></script>' if self.plotly_src
               else f"<script>{plotly_js()}</script>")
            + "</head><body>"
            + "".join(self.parts)
            + f"<script>{BOOT}</script></body></html>"
        )
