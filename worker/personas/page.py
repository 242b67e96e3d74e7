"""The personas page: one self-contained HTML document (inline CSS and SVG; no scripts, fonts or links to fetch,
so it works offline and as a file) served by the worker at ``GET /personas/view`` and written by
``segment-worker report``.

- a card per segment: name, id, users now and their share, since which model version, the features that set the
  persona apart, and a sparkline of its size over event time;
- the moves between segments over a window of event time as a flow diagram (Sankey-like, inline SVG), the part a
  model update made hatched;
- the persona lifecycle events (emerged, split, merged, retired, drifted, renamed) on a timeline, then listed.

:func:`build` gathers what the page shows from a model, the sizes now, a :class:`Timeline` and persona-change
events; :func:`render` draws it. Both are pure: the worker and the report feed them from their own sources.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from worker.clustering.snapshot import ModelSnapshot
from worker.errors import ConfigError
from worker.events.timefmt import format_rfc3339, parse_timestamp
from worker.personas.reasons import model_reasons
from worker.personas.registry import NEW, RESERVED
from worker.personas.timeline import Flow, Timeline
from worker.triggers.rules import parse_duration

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
RESERVED_COLOURS = {"new": "#8aa4b8", "lapsing": "#c9a227", "dormant": "#8c8c8c", "none": "#cccccc"}
KIND_COLOURS = {
    "emerged": "#59a14f",
    "split": "#f28e2b",
    "merged": "#4e79a7",
    "retired": "#e15759",
    "drifted": "#b07aa1",
    "renamed": "#9c755f",
}
MAX_FLOWS = 40  # the largest flows drawn; the rest are summed in the caption
INSET = 80  # the lifecycle timeline's margin each side (room for an event's label)


@dataclass(frozen=True)
class Card:
    segment: str
    name: str
    users: int
    share: float
    since: str | None  # "v3, 2026-01-04": the model version and event time the persona got its id at
    reasons: tuple[tuple[str, str], ...]  # (feature, up/down), strongest first
    sizes: tuple[int, ...]  # over the page's times


@dataclass(frozen=True)
class Page:
    title: str
    scope: str  # whose users the sizes and flows count
    model_version: int | None
    generated: str
    cards: tuple[Card, ...]
    flows: tuple[Flow, ...]
    window: str  # the flows' window of event time, in words
    events: tuple[dict[str, Any], ...]  # persona-change.v1 events, oldest first
    times: tuple[int, ...]  # event times (ms) of the sparklines' points


def build(
    model: ModelSnapshot | None,
    sizes: Mapping[str, int],
    timeline: Timeline,
    events: Iterable[dict[str, Any]],
    *,
    scope: str,
    window_ms: int | None,
    now_ms: int,
) -> Page:
    """What the page shows: ``sizes`` are the users per segment now, ``timeline`` the moves that led there,
    ``events`` the persona-change events known (duplicates by ``event_id`` are dropped)."""
    history = timeline.sizes(sizes)
    total = sum(n for s, n in sizes.items() if s != "none") or 1
    cards = []
    ids = list(model.persona_ids) if model else []
    for i, pid in enumerate(ids):
        assert model is not None
        line = model.lineage.get(pid)
        since = f"v{line.since_version}, {format_rfc3339(line.since_ms)[:10]}" if line and line.since_ms else None
        why = tuple((r["feature"], r["direction"]) for r in model_reasons(model, model.centroids[i], None, i))
        cards.append(_card(pid, model.persona_names[i], sizes, total, since, why, history.series.get(pid)))
    others = sorted(s for s in sizes if s not in ids and s != "none" and sizes[s] > 0)
    for segment in sorted(others, key=lambda s: (s not in RESERVED, s)):
        cards.append(_card(segment, segment, sizes, total, None, (), history.series.get(segment)))
    span = timeline.span
    since_ms = span[1] - window_ms if span and window_ms else None
    unique = {e["event_id"]: e for e in events}
    return Page(
        title="Personas",
        scope=scope,
        model_version=model.version if model else None,
        generated=format_rfc3339(now_ms),
        cards=tuple(cards),
        flows=tuple(timeline.flows(since_ms)),
        window=_window_words(span, since_ms),
        events=tuple(sorted(unique.values(), key=lambda e: (e["model_version"], e["kind"], e["event_id"]))),
        times=history.times,
    )


def window_ms(text: str | None) -> int | None:
    """The flows' window: ``None`` or ``all`` for every move kept, else a duration like ``7d``, ``12h``."""
    if text is None or text == "all":
        return None
    problems: list[str] = []
    ms = parse_duration(text, "window", problems)
    if problems or ms <= 0:
        raise ConfigError(problems[0] if problems else f"window: {text!r} must be longer than zero")
    return ms


def _card(
    segment: str,
    name: str,
    sizes: Mapping[str, int],
    total: int,
    since: str | None,
    reasons: tuple[tuple[str, str], ...],
    series: Sequence[int] | None,
) -> Card:
    users = sizes.get(segment, 0)
    return Card(segment, name, users, users / total, since, reasons, tuple(series or ()))


def _window_words(span: tuple[int, int] | None, since_ms: int | None) -> str:
    if span is None:
        return "no moves yet"
    start = max(span[0], since_ms) if since_ms is not None else span[0]
    return f"{format_rfc3339(start)[:16].replace('T', ' ')} to {format_rfc3339(span[1])[:16].replace('T', ' ')} UTC"


# --- drawing --------------------------------------------------------------------------------------------------


def render(page: Page) -> str:
    colours = _colours([c.segment for c in page.cards] + [s for f in page.flows for s in (f.source, f.target)])
    version = f"model v{page.model_version}" if page.model_version is not None else "no model yet"
    return "".join(
        (
            "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            f"<title>{escape(page.title)} · segment-worker</title><style>{_CSS}</style></head><body>",
            f"<header><h1>{escape(page.title)}</h1><p class='meta'>{escape(version)} · {escape(page.scope)} · ",
            f"generated {escape(page.generated)}</p></header>",
            _cards(page, colours),
            _flows(page, colours),
            _lifecycle(page),
            "</body></html>\n",
        )
    )


def _colours(segments: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for s in segments:
        if s not in out:
            out[s] = RESERVED_COLOURS.get(s) or PALETTE[sum(1 for k in out if k not in RESERVED_COLOURS) % 9]
    return out


def _cards(page: Page, colours: Mapping[str, str]) -> str:
    if not page.cards:
        return "<section id='cards'><h2>Personas now</h2><p class='empty'>No users placed yet.</p></section>"
    parts = ["<section id='cards'><h2>Personas now</h2><div class='cards'>"]
    for c in page.cards:
        why = "".join(
            f"<li class='{d}'>{'▲' if d == 'up' else '▼'} {escape(f.replace('_', ' '))}</li>" for f, d in c.reasons
        )
        since = f"<p class='since'>since {escape(c.since)}</p>" if c.since else ""
        parts.append(
            f"<article class='card' data-segment='{escape(c.segment)}' style='border-top-color:{colours[c.segment]}'>"
            f"<h3>{escape(c.name)}</h3><p class='id'>{escape(c.segment)}</p>"
            f"<p class='size'><b>{c.users:,}</b> users · {c.share:.1%}</p>{since}"
            f"{_sparkline(c.sizes, colours[c.segment])}<ul class='why'>{why}</ul></article>"
        )
    parts.append("</div></section>")
    return "".join(parts)


def _sparkline(sizes: Sequence[int], colour: str, width: int = 200, height: int = 40) -> str:
    if len(sizes) < 2:
        return "<p class='spark-none'>size over time: not enough history yet</p>"
    top = max(sizes) or 1
    step = width / (len(sizes) - 1)
    points = " ".join(f"{i * step:.1f},{height - 2 - (n / top) * (height - 4):.1f}" for i, n in enumerate(sizes))
    return (
        f"<svg class='spark' viewBox='0 0 {width} {height}' width='{width}' height='{height}' role='img'>"
        f"<title>users over time: {sizes[0]:,} to {sizes[-1]:,} (peak {top:,})</title>"
        f"<polyline points='{points}' fill='none' stroke='{colour}' stroke-width='2'/></svg>"
    )


def _flows(page: Page, colours: Mapping[str, str]) -> str:
    head = f"<section id='flows'><h2>Moves between personas</h2><p class='meta'>{escape(page.window)}"
    placed = sum(f.users for f in page.flows if f.source == NEW)
    flows = [f for f in page.flows if f.source != NEW]  # first placements would drown the migrations
    caption = f" · {placed:,} first placements out of new, not drawn" if placed else ""
    if not flows:
        return head + escape(caption) + "</p><p class='empty'>No user has moved between personas here.</p></section>"
    shown, rest = flows[:MAX_FLOWS], flows[MAX_FLOWS:]
    moved = sum(f.users for f in flows)
    by_model = sum(f.by_model for f in flows)
    caption = f" · {moved:,} moves, {by_model:,} of them made by a model update (hatched)" + caption
    if rest:
        caption += f" · {len(rest)} smaller flows ({sum(f.users for f in rest):,} moves) not drawn"
    names = {c.segment: c.name for c in page.cards}
    return head + escape(caption) + "</p>" + _sankey(shown, colours, names) + "</section>"


def _sankey(
    flows: Sequence[Flow], colours: Mapping[str, str], names: Mapping[str, str], width: int = 960, height: int = 380
) -> str:
    """Sources left, targets right, each sorted by size; a node's bands in the order of the nodes at their other
    end, so that they cross as little as the order allows."""
    left = _nodes([(f.source, f.users) for f in flows])
    right = _nodes([(f.target, f.users) for f in flows])
    total = max(sum(left.values()), sum(right.values()))
    gap = 10
    scale = (height - 20 - gap * (max(len(left), len(right)) - 1)) / total
    x0, x1, node_w = 170, width - 170 - 14, 14
    top_l, top_r = _stack(left, scale, gap), _stack(right, scale, gap)
    order_l, order_r = {s: i for i, s in enumerate(left)}, {s: i for i, s in enumerate(right)}
    bands = [(f, n, model) for f in flows for n, model in ((f.users - f.by_model, False), (f.by_model, True)) if n > 0]
    starts = _offsets(bands, top_l, scale, lambda b: (order_l[b[0].source], order_r[b[0].target], b[2]), True)
    ends = _offsets(bands, top_r, scale, lambda b: (order_r[b[0].target], order_l[b[0].source], b[2]), False)
    out = [
        f"<svg class='sankey' viewBox='0 0 {width} {height}' width='100%' role='img'>",
        "<defs><pattern id='model-made' width='6' height='6' patternUnits='userSpaceOnUse' "
        "patternTransform='rotate(45)'><rect width='6' height='6' fill='#ffffff' fill-opacity='0.55'/>"
        "<line x1='0' y1='0' x2='0' y2='6' stroke='#333' stroke-width='2' stroke-opacity='0.5'/></pattern></defs>",
    ]
    for i, (f, n, model) in enumerate(bands):
        out.append(_band(x0 + node_w, x1, starts[i], ends[i], n * scale, colours[f.source], f, n, model))
    for nodes, tops, x, anchor, dx in ((left, top_l, x0, "end", -6), (right, top_r, x1, "start", node_w + 6)):
        for segment, users in nodes.items():
            y, h = tops[segment], max(1.0, users * scale)
            out.append(
                f"<g class='node' data-segment='{escape(segment)}'><title>{escape(names.get(segment, segment))}</title>"
                f"<rect x='{x}' y='{y:.1f}' width='{node_w}' "
                f"height='{h:.1f}' fill='{colours[segment]}'/><text x='{x + dx}' y='{y + h / 2 + 4:.1f}' "
                f"text-anchor='{anchor}'>{escape(segment)} ({users:,})</text></g>"
            )
    out.append("</svg>")
    return "".join(out)


Band = tuple[Flow, int, bool]  # a flow's users moved by their behaviour, or by a model update


def _offsets(
    bands: Sequence[Band], tops: Mapping[str, float], scale: float, order: Callable[[Band], Any], source: bool
) -> list[float]:
    """Where each band meets its node (its source's or its target's), the node's bands stacked in ``order``."""
    used = dict(tops)
    out = [0.0] * len(bands)
    for i in sorted(range(len(bands)), key=lambda i: order(bands[i])):
        f, n, _ = bands[i]
        node = f.source if source else f.target
        out[i] = used[node]
        used[node] += n * scale
    return out


def _nodes(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for segment, n in pairs:
        totals[segment] = totals.get(segment, 0) + n
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def _stack(nodes: Mapping[str, int], scale: float, gap: float) -> dict[str, float]:
    tops, y = {}, 10.0
    for segment, users in nodes.items():
        tops[segment] = y
        y += max(1.0, users * scale) + gap
    return tops


def _band(xa: float, xb: float, ya: float, yb: float, h: float, colour: str, f: Flow, users: int, model: bool) -> str:
    xm = (xa + xb) / 2
    d = (
        f"M{xa:.1f},{ya:.1f} C{xm:.1f},{ya:.1f} {xm:.1f},{yb:.1f} {xb:.1f},{yb:.1f} L{xb:.1f},{yb + h:.1f} "
        f"C{xm:.1f},{yb + h:.1f} {xm:.1f},{ya + h:.1f} {xa:.1f},{ya + h:.1f} Z"
    )
    how = "by a model update" if model else "by their own behaviour"
    title = f"{f.source} → {f.target}: {users:,} users {how}"
    paint = f"<path d='{d}' fill='url(#model-made)'/>" if model else ""
    return (
        f"<g class='flow' data-from='{escape(f.source)}' data-to='{escape(f.target)}' data-users='{users}' "
        f"data-by-model='{int(model)}'>"
        f"<title>{escape(title)}</title><path d='{d}' fill='{colour}' fill-opacity='0.45'/>{paint}</g>"
    )


def _lifecycle(page: Page, width: int = 960, height: int = 96) -> str:
    head = "<section id='lifecycle'><h2>Persona lifecycle</h2>"
    if not page.events:
        return head + "<p class='empty'>No persona has emerged, split, merged, retired or drifted yet.</p></section>"
    times = [parse_timestamp(e["at"]) for e in page.events]
    lo, hi = min([*times, *page.times[:1]]), max([*times, *page.times[-1:]])
    span = max(1, hi - lo)
    out = [head, f"<svg class='timeline' viewBox='0 0 {width} {height}' width='100%' role='img'>"]
    out.append(f"<line x1='{INSET}' y1='45' x2='{width - INSET}' y2='45' stroke='#999'/>")
    for n, (e, t) in enumerate(zip(page.events, times, strict=True)):
        x = INSET + (t - lo) / span * (width - 2 * INSET)
        what = f"v{e['model_version']} {e['kind']}: {_ids(e['from'])} → {_ids(e['to'])} ({e['at'][:16]})"
        out.append(
            f"<g class='event' data-kind='{escape(e['kind'])}'><title>{escape(what)}</title>"
            f"<circle cx='{x:.1f}' cy='45' r='7' fill='{KIND_COLOURS.get(e['kind'], '#555')}'/>"
            f"<text x='{x:.1f}' y='{24 if n % 2 else 72}' text-anchor='middle'>"
            f"v{e['model_version']} {escape(e['kind'])}</text></g>"
        )
    for x, t, anchor in ((INSET, lo, "start"), (width - INSET, hi, "end")):
        out.append(f"<text x='{x}' y='90' text-anchor='{anchor}'>{escape(format_rfc3339(t)[:10])}</text>")
    out.append("</svg><table><thead><tr><th>model</th><th>at</th><th>kind</th><th>from</th><th>to</th>")
    out.append("<th>where the users went</th></tr></thead><tbody>")
    for e in reversed(page.events):
        flows = ", ".join(f"{f['from']} → {f['to']}: {f['users']:,}" for f in e["flows"]) or "-"
        out.append(
            f"<tr class='event-row' data-kind='{escape(e['kind'])}'><td>v{e['model_version_before']} → "
            f"v{e['model_version']}</td><td>{escape(e['at'][:16].replace('T', ' '))}</td>"
            f"<td><span class='kind' style='background:{KIND_COLOURS.get(e['kind'], '#555')}'>"
            f"{escape(e['kind'])}</span></td><td>{_named(e['from'])}</td><td>{_named(e['to'])}</td>"
            f"<td>{escape(flows)}</td></tr>"
        )
    out.append("</tbody></table></section>")
    return "".join(out)


def _ids(personas: Sequence[dict[str, Any]]) -> str:
    return ", ".join(str(p["id"]) for p in personas) or "-"


def _named(personas: Sequence[dict[str, Any]]) -> str:
    return "<br>".join(f"<b>{escape(str(p['id']))}</b> {escape(str(p['name']))}" for p in personas) or "-"


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{margin:0 0 4px}h2{margin:28px 0 6px;font-size:1.15em}.meta{color:#666;margin:0 0 8px;font-size:.9em}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:12px}
.card{background:#fff;border:1px solid #ddd;border-top:5px solid #888;border-radius:6px;padding:10px 12px}
.card h3{margin:0;font-size:1em}.card .id{color:#888;margin:0;font-size:.8em}.size{margin:6px 0 2px}
.since{color:#666;font-size:.8em;margin:0 0 4px}.why{margin:4px 0 0;padding-left:0;list-style:none;font-size:.85em}
.why .up{color:#2d6a2d}.why .down{color:#8a2d2d}.spark-none,.empty{color:#888;font-size:.85em}
svg text{font-size:12px;fill:#333}.sankey,.timeline{background:#fff;border:1px solid #ddd;border-radius:6px}
table{border-collapse:collapse;margin-top:10px;background:#fff;font-size:.85em}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
.kind{color:#fff;border-radius:3px;padding:1px 6px}
"""
