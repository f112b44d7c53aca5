"""The output text as HTML: each token coloured by its probability, alternatives on hover.

Everything that came from a user or a model is escaped here: a prompt or a token such as
`<img src=x onerror=alert(1)>` is shown as text, never interpreted.
"""

from __future__ import annotations

import html
import math

from playground.events import Event, LaneEvent, LaneTokenEvent, RunStarted, TokenEvent, TreeEvent, notices

CONTROL_NAMES = {"\n": "\u21b5\n", "\t": "\u2192\t", "\r": "\u240d"}


def visible(text: str) -> str:
    """Make whitespace and control characters visible (so a newline token can be seen and hovered)."""
    out = []
    for ch in text:
        if ch in CONTROL_NAMES:
            out.append(CONTROL_NAMES[ch])
        elif ord(ch) < 32 or 127 <= ord(ch) < 160:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def esc(text: str) -> str:
    """For HTML we write (attributes included)."""
    return html.escape(text, quote=True)


def plot_text(text: str) -> str:
    """For Plotly labels and hover text: Plotly reads a small HTML subset, so <, > and & must be
    escaped, but it shows &quot; literally, so quotes stay as they are."""
    return html.escape(text, quote=False)


def probability_colour(prob: float) -> str:
    """Red (unlikely) to green (likely), light enough to read black text on."""
    hue = int(120 * max(0.0, min(1.0, prob)))
    return f"hsl({hue}, 75%, 82%)"


def token_tooltip(event: TokenEvent) -> str:
    lines = [f"p = {math.exp(event.logprob):.3f}   H = {event.entropy:.2f} nats"]
    if event.kept is not None:
        lines[0] += f"   kept = {event.kept}"
    for alt in event.alternatives:
        mark = "\u25b6" if alt.token_id == event.token_id else "  "
        lines.append(f"{mark} {visible(alt.text)!r:<18} {alt.prob:.3f}")
    return "\n".join(lines)


def tokens_html(events: list[Event]) -> str:
    parts = []
    for event in events:
        if isinstance(event, TokenEvent):
            colour = probability_colour(math.exp(event.logprob))
            parts.append(
                f'<span class="dp-tok" style="background:{colour}" data-index="{event.index}" '
                f'data-tip="{esc(token_tooltip(event))}">{esc(visible(event.text)) or "&#8203;"}</span>'
            )
    preview = ""
    if not parts:
        previews = [e.preview for e in events if isinstance(e, TreeEvent) and e.preview]
        if previews:
            preview = f'<span class="dp-preview" title="best hypothesis so far, not yet committed">{esc(previews[-1])}</span>'
    prompt = next((e.prompt for e in events if isinstance(e, RunStarted)), "")
    head = notices_html(events) + (f'<div class="dp-prompt">{esc(prompt)}</div>' if prompt else "")
    lanes = any(isinstance(e, (LaneEvent, LaneTokenEvent)) for e in events)
    empty = "(no answer yet: the lanes below are decoding)" if lanes else "(no output yet)"
    body = "".join(parts) + preview or f'<span class="dp-empty">{empty}</span>'
    return f'<div class="dp-text">{head}<div class="dp-output">{body}</div></div>'


def notices_html(events: list[Event]) -> str:
    return "".join(f'<div class="dp-notice">{esc(n)}</div>' for n in notices(events))


CSS = """
.dp-text { font-family: ui-monospace, monospace; font-size: 14px; line-height: 1.9; }
.dp-prompt { white-space: pre-wrap; color: #555; border-left: 3px solid #ccc; padding-left: 8px; margin-bottom: 8px; }
.dp-output { white-space: pre-wrap; word-break: break-word; }
.dp-tok { position: relative; border-radius: 3px; padding: 1px 0; color: #111; cursor: default; }
.dp-tok:hover { outline: 2px solid #333; }
.dp-tok:hover::after { content: attr(data-tip); position: absolute; left: 0; top: 1.8em; z-index: 50;
  white-space: pre; background: #222; color: #eee; padding: 6px 8px; border-radius: 4px; font-size: 12px;
  line-height: 1.4; pointer-events: none; }
.dp-preview { color: #888; font-style: italic; }
.dp-empty { color: #999; }
.dp-metrics td { padding: 2px 10px 2px 0; } .dp-metrics td:first-child { color: #666; }
.dp-lanes { font-family: ui-monospace, monospace; font-size: 12px; margin-top: 10px; }
.dp-lanes-title { color: #666; margin-bottom: 4px; }
.dp-lane-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 6px; }
.dp-lane { border: 1px solid #ddd; border-left: 4px solid #1f77b4; border-radius: 4px; padding: 3px 6px; }
.dp-lane-head { color: #444; font-weight: 600; margin-bottom: 2px; }
.dp-lane-text { white-space: pre-wrap; word-break: break-word; max-height: 9em; overflow-y: auto; line-height: 1.4; }
.dp-lane-finished { border-left-color: #ff7f0e; }
.dp-lane-chosen { border-left-color: #2ca02c; background: #f1faf1; }
.dp-lane-pruned, .dp-lane-dropped { border-left-color: #c7c7c7; color: #888; }
.dp-notice { color: #8a5a00; background: #fff6df; border-left: 3px solid #e0a800; padding: 2px 8px; margin-bottom: 6px; }
"""
