"""The session timeline: sentiment over time with the recognised words under it, as a PNG (for a
report) and a self-contained HTML page (an inline SVG, no network, no scripts needed to view it).

When the estimates have emotions (a checkpoint with an emotion head, or the face expert's where a
face was seen), an emotion timeline sits below
the sentiment one: the seven smoothed probabilities stacked (each window's column sums to 1), so the
band that is widest at a time is the top emotion then. Without emotions there is no such panel.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dmd_types import EMOTIONS

COLOURS = {"sentiment": "#4a7bd0", "smoothed": "#d0654a", "text": "#2e8b57", "audio": "#8a5cc2",
           "visual": "#c29a2e"}
# one colour per emotion, the same as the web pages' (workers/web/static/common.js)
EMOTION_COLOURS = {"neutral": "#9ca3af", "happy": "#f2b705", "sad": "#3b6fb6", "angry": "#d64545",
                   "fearful": "#8a5cc2", "disgusted": "#2e8b57", "surprised": "#f08c2e"}


def _points(estimates: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = sorted(estimates, key=lambda e: (e["t_end"], e["window"]))
    return [{"t": e["t_end"], "sentiment": e["sentiment"], "smoothed": e["smoothed"], "label": e["label"],
             "emotions": e.get("emotions"), "emotion": e.get("emotion"),
             "present": {m: e["modalities"][m]["present"] for m in ("text", "audio", "visual")}} for e in rows]


def _emotion_points(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points that have emotions: all of them with an emotion head; without one, those where a face was seen."""
    return [p for p in points if p["emotions"]]


def _words(estimates: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The words of overlapping windows, each once: a window cuts a word's span to its own edges, so
    the same text with touching spans is one word (a word said twice has spans apart)."""
    words: list[dict[str, Any]] = []
    for e in estimates:
        for w in e.get("words", []):
            same = next((o for o in words if o["word"] == w["word"] and o["start"] <= w["end"] + 0.01
                         and w["start"] <= o["end"] + 0.01), None)
            if same is None:
                words.append({"word": w["word"], "start": w["start"], "end": w["end"]})
            else:
                same["start"], same["end"] = min(same["start"], w["start"]), max(same["end"], w["end"])
    return sorted(words, key=lambda w: w["start"])


def write_png(estimates: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Sentiment and its moving average per window end, words along the time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = _points(estimates)
    words = _words(estimates)
    felt = _emotion_points(points)
    if felt:
        fig, (ax, ax_emotions, ax_words) = plt.subplots(3, 1, figsize=(11, 6.6), sharex=True,
                                                        gridspec_kw={"height_ratios": [4, 2.6, 1]})
        ax_emotions.stackplot([p["t"] for p in felt], [[p["emotions"][k] for p in felt] for k in EMOTIONS],
                              labels=EMOTIONS, colors=[EMOTION_COLOURS[k] for k in EMOTIONS], alpha=0.9)
        ax_emotions.set_ylim(0, 1)
        ax_emotions.set_ylabel("emotions (EMA)")
        ax_emotions.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    else:
        fig, (ax, ax_words) = plt.subplots(2, 1, figsize=(11, 4.6), sharex=True,
                                           gridspec_kw={"height_ratios": [4, 1]})
    t = [p["t"] for p in points]
    ax.axhspan(-0.5, 0.5, color="#eeeeee", zorder=0)
    ax.plot(t, [p["sentiment"] for p in points], "o-", color=COLOURS["sentiment"], ms=3, lw=1, label="sentiment")
    ax.plot(t, [p["smoothed"] for p in points], "-", color=COLOURS["smoothed"], lw=2, label="smoothed (EMA)")
    ax.set_ylim(-3.2, 3.2)
    ax.set_ylabel("sentiment (-3 .. 3)")
    ax.axhline(0, color="grey", lw=0.6)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.25)
    if title:
        ax.set_title(title)
    for i, w in enumerate(words):
        ax_words.text(w["start"], (i % 3) * 0.3 + 0.1, w["word"], fontsize=7, rotation=0)
    ax_words.set_ylim(0, 1)
    ax_words.set_yticks([])
    ax_words.set_xlabel("session time (s)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_html(estimates: Sequence[dict[str, Any]], path: str | Path, title: str = "Live DMD session") -> Path:
    """A self-contained page: an SVG chart of sentiment and EMA, the words, and the data as JSON."""
    points = _points(estimates)
    words = _words(estimates)
    width, height, pad = 960, 320, 40
    t_max = max([p["t"] for p in points] + [w["end"] for w in words] + [1.0])

    def x(t: float) -> float:
        return pad + (width - 2 * pad) * t / t_max

    def y(v: float) -> float:
        return pad + (height - 2 * pad) * (3 - v) / 6

    def path_of(key: str) -> str:
        return " ".join(f"{'M' if i == 0 else 'L'}{x(p['t']):.1f},{y(p[key]):.1f}" for i, p in enumerate(points))

    grid = "".join(f'<line x1="{pad}" x2="{width - pad}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
                   f'<text x="{pad - 6}" y="{y(v) + 4:.1f}" class="axis" text-anchor="end">{v:+d}</text>'
                   for v in range(-3, 4))
    ticks = "".join(f'<text x="{x(t):.1f}" y="{height - pad + 16}" class="axis" text-anchor="middle">{t:g}s</text>'
                    for t in range(0, int(t_max) + 1, max(1, int(t_max // 10) or 1)))
    dots = "".join(f'<circle cx="{x(p["t"]):.1f}" cy="{y(p["sentiment"]):.1f}" r="2.5" class="dot">'
                   f'<title>{p["t"]:.1f}s: {p["sentiment"]:+.2f} ({p["label"]})</title></circle>' for p in points)
    word_marks = "".join(
        f'<text x="{x(w["start"]):.1f}" y="{height + 14 + (i % 3) * 14}" class="word">{html.escape(w["word"])}</text>'
        for i, w in enumerate(words))
    svg = (f'<svg viewBox="0 0 {width} {height + 60}" width="100%" role="img" aria-label="sentiment timeline">'
           f'<rect x="{pad}" y="{y(0.5):.1f}" width="{width - 2 * pad}" '
           f'height="{y(-0.5) - y(0.5):.1f}" class="neutral"/>'
           f'{grid}{ticks}<path d="{path_of("sentiment")}" class="raw"/><path d="{path_of("smoothed")}" class="ema"/>'
           f'{dots}{word_marks}</svg>')
    felt = _emotion_points(points)
    emotions_section = _emotions_svg(felt, x, width, pad) if felt else ""
    data = json.dumps({"points": points, "words": words}, separators=(",", ":"))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
.grid {{ stroke: #e4e4e4; }} .axis {{ font-size: 11px; fill: #666; }}
.neutral {{ fill: #f3f3f3; }} .raw {{ fill: none; stroke: {COLOURS["sentiment"]}; stroke-width: 1.2; }}
.ema {{ fill: none; stroke: {COLOURS["smoothed"]}; stroke-width: 2.5; }} .dot {{ fill: {COLOURS["sentiment"]}; }}
.word {{ font-size: 11px; fill: #333; }} .legend span {{ margin-right: 16px; }}
.emotions-title {{ font-size: 16px; margin: 24px 0 4px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="legend"><span style="color:{COLOURS["sentiment"]}">&#9679; sentiment per window</span>
<span style="color:{COLOURS["smoothed"]}">&#9644; smoothed (EMA)</span>
<span>grey band: neutral</span></p>
{svg}
{emotions_section}
<p>{len(points)} windows, {len(words)} words. Sentiment is DMD's fused prediction in [-3, 3]
(negative .. positive), one per window.</p>
<script type="application/json" id="dmd-timeline">{data}</script>
</body></html>
"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _emotions_svg(points: Sequence[dict[str, Any]], x: Any, width: int, pad: int) -> str:
    """The emotion timeline: the seven smoothed probabilities stacked per window end (an area per
    emotion, neutral at the bottom), a legend, and the top emotion of each window as a tooltip."""
    height = 150

    def y(v: float) -> float:
        return 10 + (height - 20) * (1 - v)

    below = [0.0] * len(points)
    areas = []
    for k in EMOTIONS:
        above = [b + p["emotions"][k] for b, p in zip(below, points)]
        top = [f"{x(p['t']):.1f},{y(v):.1f}" for p, v in zip(points, above)]
        bottom = [f"{x(p['t']):.1f},{y(v):.1f}" for p, v in zip(reversed(points), reversed(below))]
        areas.append(f'<polygon points="{" ".join(top + bottom)}" fill="{EMOTION_COLOURS[k]}" class="emotion">'
                     f"<title>{k}</title></polygon>")
        below = above
    marks = "".join(f'<rect x="{x(p["t"]) - 1:.1f}" y="{height - 9}" width="2" height="8" '
                    f'fill="{EMOTION_COLOURS.get(p["emotion"], "#000")}"><title>{p["t"]:.1f}s: {p["emotion"]} '
                    f'{p["emotions"][p["emotion"]]:.0%}</title></rect>' for p in points if p["emotion"] in EMOTIONS)
    legend = "".join(f'<span style="color:{EMOTION_COLOURS[k]}">&#9632; {k}</span>' for k in EMOTIONS)
    axis = "".join(f'<text x="{pad - 6}" y="{y(v) + 4:.1f}" class="axis" text-anchor="end">{v:g}</text>'
                   for v in (0, 0.5, 1))
    return (f'<h2 class="emotions-title">Emotions (moving average; a band\'s height is its probability)</h2>'
            f'<p class="legend emotions-legend">{legend}</p>'
            f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="emotion timeline" '
            f'class="emotion-timeline">{axis}{"".join(areas)}{marks}</svg>')
