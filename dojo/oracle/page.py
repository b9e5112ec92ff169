"""The Oracle's page: learning curves drawn server-side as SVG, from the files the pipeline already writes.

* train and val loss by step — each checkpoint's ledger (``train_loss`` is the chunk's token-weighted mean);
* accuracy per skill and level by step — the ledgers' ``eval`` (``dojo eval`` / evaluate/checkpoint add it);
* level advances (``state/curriculum.json``: the evaluation that completed each window) and promotions
  (``state/promotions.jsonl``) as marked vertical lines on both charts;
* queue depth, the promoted checkpoint and the models the server holds.

Plain HTML and inline SVG; no JavaScript at all (the Content-Security-Policy forbids it), a ``<meta refresh>``
every ``serve.refresh_seconds`` keeps it live. Every text taken from a file is escaped. A file that cannot be read
is named on the page instead of breaking it.
"""
from __future__ import annotations

import html
from pathlib import Path

from dojo.storage import StateError, read_json

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
          "#ff7f0e")
PROMOTION_COLOR = "#2ca02c"
ADVANCE_COLOR = "#ff7f0e"
MAX_PROMOTION_LINES = 10_000

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 6px}
.facts{display:flex;gap:28px;flex-wrap:wrap;margin:12px 0}
.facts div{background:#f4f6f8;padding:8px 12px;border-radius:6px}
.facts b{display:block;font-size:12px;color:#666;font-weight:normal}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}
.note{color:#666;font-size:12px}.problem{color:#b00}
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


# ---------------------------------------------------------------- reading what the pipeline wrote
def read_history(root: Path) -> dict:
    """Points and marks for the charts: {checkpoints: [...], promotions: [(step, name)], advances: [(step, text)],
    problems: [text]}."""
    from dojo import promotion
    from model import checkpoint as ckpt

    root = Path(root)
    out = {"checkpoints": [], "promotions": [], "advances": [], "problems": []}
    for path in ckpt.candidates(root):
        try:
            ledger = ckpt.read_ledger(path)
        except (StateError, OSError) as exc:
            out["problems"].append(str(exc))
            continue
        accuracy = ledger.get("eval") if isinstance(ledger.get("eval"), dict) else {}
        out["checkpoints"].append({"name": path.name, "step": ckpt.parse_name(path.name),
                                   "train_loss": ledger.get("train_loss"), "val_loss": ledger.get("val_loss"),
                                   "skill": ledger.get("skill"), "level": ledger.get("level"), "eval": accuracy,
                                   "time": ledger.get("time")})
    steps = {c["name"]: c["step"] for c in out["checkpoints"]}
    try:
        for record in promotion.history(root)[-MAX_PROMOTION_LINES:]:
            if record.get("promote") and record.get("candidate") in steps:
                out["promotions"].append((steps[record["candidate"]], record["candidate"]))
    except OSError as exc:
        out["problems"].append(f"{root / 'state' / 'promotions.jsonl'}: {exc.strerror}")
    try:
        state = read_json(root / "state" / "curriculum.json", expect=dict, what="curriculum state") or {}
    except StateError as exc:
        out["problems"].append(str(exc))
        state = {}
    for skill, s in (state.get("skills") or {}).items():
        history = s.get("history") if isinstance(s, dict) else None
        for index in (s.get("advanced_at") or []) if isinstance(s, dict) else []:
            if isinstance(history, list) and isinstance(index, int) and 0 < index <= len(history):
                h = history[index - 1]
                if isinstance(h, dict) and isinstance(h.get("step"), int):
                    out["advances"].append((h["step"], f"{skill} level {h.get('level')} mastered"))
    return out


# ---------------------------------------------------------------- SVG
def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:.3g}"


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], marks: list[tuple[float, str, str]],
               y_label: str, y_range: tuple[float, float] | None = None, width: int = 1000,
               height: int = 300) -> str:
    """An SVG line chart: one polyline (with dots) per series, x = step; ``marks`` are (step, label, color)
    vertical dashed lines. Empty series give a chart that says so."""
    left, right, top, bottom = 60, 190, 30, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [p for pts in series.values() for p in pts]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
             f'<rect width="{width}" height="{height}" fill="#fff"/>',
             f'<text x="{left}" y="18" font-size="14" font-weight="bold">{esc(title)}</text>']
    if not points:
        parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle" fill="#888">'
                     f'no data yet</text></svg>')
        return "".join(parts)
    xs = [p[0] for p in points] + [m[0] for m in marks]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = y_range or (min(p[1] for p in points), max(p[1] for p in points))
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    if not y_range:
        pad = (y1 - y0) * 0.08
        y0, y1 = y0 - pad, y1 + pad

    def sx(x):
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y):
        return top + (1 - (y - y0) / (y1 - y0)) * plot_h

    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>')
    for t in _ticks(y0, y1):
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" font-size="11" text-anchor="end">{_fmt(t)}</text>')
    for t in _ticks(x0, x1):
        parts.append(f'<text x="{sx(t):.1f}" y="{top + plot_h + 16}" font-size="11" text-anchor="middle">'
                     f'{_fmt(round(t))}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" font-size="12" text-anchor="middle">step</text>'
                 f'<text x="14" y="{top + plot_h / 2}" font-size="12" text-anchor="middle" '
                 f'transform="rotate(-90 14 {top + plot_h / 2})">{esc(y_label)}</text>')
    for x, label, color in marks:
        parts.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{top + plot_h}" stroke="{color}" '
                     f'stroke-dasharray="4 3"><title>{esc(label)}</title></line>')
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        pts = sorted(pts)
        if len(pts) > 1:
            coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"><title>{esc(name)} at step '
                  f'{_fmt(x)}: {y:.4g}</title></circle>' for x, y in pts]
        ly = top + 8 + 18 * i
        parts.append(f'<line x1="{left + plot_w + 14}" x2="{left + plot_w + 34}" y1="{ly}" y2="{ly}" '
                     f'stroke="{color}" stroke-width="2"/><text x="{left + plot_w + 40}" y="{ly + 4}" '
                     f'font-size="12">{esc(name)}</text>')
    legend_y = top + 8 + 18 * len(series)
    for label, color in (("promotion", PROMOTION_COLOR), ("level advance", ADVANCE_COLOR)):
        if any(c == color for _, _, c in marks):
            parts.append(f'<line x1="{left + plot_w + 14}" x2="{left + plot_w + 34}" y1="{legend_y}" '
                         f'y2="{legend_y}" stroke="{color}" stroke-dasharray="4 3"/><text x="{left + plot_w + 40}" '
                         f'y="{legend_y + 4}" font-size="12">{label}</text>')
            legend_y += 18
    parts.append("</svg>")
    return "".join(parts)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def charts(history: dict) -> tuple[str, str]:
    """(loss chart, accuracy chart) SVGs."""
    ckpts = [c for c in history["checkpoints"] if c["step"] is not None]
    marks = [(s, f"promoted {n}", PROMOTION_COLOR) for s, n in history["promotions"]]
    marks += [(s, text, ADVANCE_COLOR) for s, text in history["advances"]]
    loss = {"train loss": [(c["step"], c["train_loss"]) for c in ckpts if _number(c["train_loss"])],
            "val loss": [(c["step"], c["val_loss"]) for c in ckpts if _number(c["val_loss"])]}
    accuracy: dict[str, list] = {}
    for c in ckpts:
        for skill, levels in c["eval"].items():
            for level, acc in (levels.items() if isinstance(levels, dict) else []):
                if _number(acc):
                    accuracy.setdefault(f"{skill} L{level}", []).append((c["step"], acc))
    accuracy = dict(sorted(accuracy.items()))
    return (line_chart("Loss by step", {k: v for k, v in loss.items() if v}, marks, "loss"),
            line_chart("Eval accuracy per level by step", accuracy, marks, "accuracy", (0.0, 1.0)))


# ---------------------------------------------------------------- the pages
def render(cfg, resident: list[str]) -> str:
    """The whole page for the storage root of ``cfg``; ``resident`` are the loaded models' paths."""
    from dojo import promotion, queue

    root = Path(cfg.root)
    history = read_history(root)
    problems = list(history["problems"])
    try:
        pointer = promotion.current(root)
    except StateError as exc:
        pointer, problems = None, problems + [str(exc)]
    try:
        depth = queue.depth(cfg)
    except (OSError, ValueError) as exc:
        depth, problems = {}, problems + [f"queue: {exc}"]
    loss_svg, accuracy_svg = charts(history)
    promoted = (f"{esc(pointer['checkpoint'])}<br><span class=note>{esc(pointer.get('reason', ''))}</span>"
                if pointer else "none yet")
    rows = "".join(
        f"<tr><td>{esc(c['name'])}</td><td>{esc(c['step'])}</td><td>{_cell(c['train_loss'])}</td>"
        f"<td>{_cell(c['val_loss'])}</td><td>{esc(c['skill'] or '')} {esc(c['level'] or '')}</td>"
        f"<td>{esc(_eval_text(c['eval']))}</td></tr>"
        for c in reversed(history["checkpoints"][-20:]))
    refresh = (f'<meta http-equiv="refresh" content="{int(cfg.serve.refresh_seconds)}">'
               if cfg.serve.refresh_seconds else "")
    problem_list = "".join(f"<li class=problem>{esc(p)}</li>" for p in problems)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}
<title>dojo Oracle</title><style>{STYLE}</style></head><body>
<h1>dojo Oracle</h1><div class=note>{esc(root)}</div>
<div class=facts>
<div><b>promoted checkpoint</b>{promoted}</div>
<div><b>queue depth</b>{esc(', '.join(f'{k} {v}' for k, v in depth.items()) or 'n/a')}</div>
<div><b>checkpoints</b>{len(history['checkpoints'])}</div>
<div><b>loaded models</b>{esc(', '.join(Path(p).name for p in resident) or 'none')}</div>
</div>
{f'<ul>{problem_list}</ul>' if problems else ''}
<h2>Learning curves</h2>
{loss_svg}
{accuracy_svg}
<div class=note>train loss: each chunk's token-weighted mean; val loss: the held-out examples after the chunk;
accuracy: the fixed eval sets (BIN level 1's covers its whole space, so it overlaps training).</div>
<h2>Recent checkpoints</h2>
<table><tr><th>checkpoint</th><th>step</th><th>train loss</th><th>val loss</th><th>trained on</th><th>eval</th></tr>
{rows}</table>
<p class=note>API: /v1/models and /v1/chat/completions with Authorization: Bearer KEY. Ids: promoted, latest,
a checkpoint name, step-N.</p>
</body></html>"""


def _eval_text(scores: dict) -> str:
    return ", ".join(f"{skill} L{level} {acc:.3f}" for skill, levels in scores.items() if isinstance(levels, dict)
                     for level, acc in levels.items() if _number(acc))


def _cell(v) -> str:
    return f"{v:.4f}" if _number(v) else "–"


def login_page(error: str = "") -> str:
    """Asked for when the page is opened without the key: a form that sets an HttpOnly cookie (or use HTTP basic
    auth with the key as the password)."""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>dojo Oracle: key</title>
<style>{STYLE}</style></head><body><h1>dojo Oracle</h1>
<p>This page needs the Oracle's API key ($DOJO_API_KEY, or state/serve.key on the server).</p>
{f'<p class=problem>{esc(error)}</p>' if error else ''}
<form method="post" action="/login"><input type="password" name="key" autocomplete="current-password"
size="48" aria-label="API key"> <button type="submit">Open</button></form>
<p class=note>Or use HTTP basic auth: any user name, the key as the password.</p></body></html>"""
