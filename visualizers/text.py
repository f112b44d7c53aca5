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


def token_rank(event: TokenEvent) -> int | None:
    """The chosen token's rank among the alternatives shown (1 = the most probable), None when it is
    not among them (a sampled token outside the top-k)."""
    ranked = sorted(event.alternatives, key=lambda a: -a.prob)       # stable: ties keep the model's order
    return next((i for i, a in enumerate(ranked, 1) if a.token_id == event.token_id), None)


def token_tooltip(event: TokenEvent) -> str:
    rank = token_rank(event)
    lines = [f"p = {math.exp(event.logprob):.3f}   H = {event.entropy:.2f} nats"]
    if event.kept is not None:
        lines[0] += f"   kept = {event.kept}"
    lines.append(f"rank {rank}" if rank else f"rank: not in the top-{len(event.alternatives)} shown")
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
    started = next((e for e in events if isinstance(e, RunStarted)), None)
    prompt = started.prompt if started else ""
    head = notices_html(events) + (f'<div class="dp-prompt">{esc(prompt)}</div>' if prompt else "")
    lanes = any(isinstance(e, (LaneEvent, LaneTokenEvent)) for e in events)
    empty = "(no answer yet: the lanes below are decoding)" if lanes else "(no output yet)"
    body = "".join(parts) + preview or f'<span class="dp-empty">{empty}</span>'
    if started and started.parent_id:
        head += branch_note(started)
        prefix = esc(visible(started.prefix or ""))
        inherited = (f'<span class="dp-inherited" title="inherited from the parent run">{prefix}</span>'
                     f'<span class="dp-branch-point" title="the branch point: the token picked here">'
                     f'{esc(visible(started.chosen or "")) or "&#8203;"}</span>')
        body = inherited + "".join(parts) + preview   # an empty branch still shows where it left
    run = f' data-run="{esc(started.run_id)}"' if started else ""      # a token click branches (ui/branch.py)
    return f'<div class="dp-text"{run}>{head}<div class="dp-output">{body}</div></div>'


def branch_note(started: RunStarted) -> str:
    """Where a branch left its parent: a link to the parent and the position replaced."""
    parent = started.parent_id or ""
    return (f'<div class="dp-branch-note">Branch of run <a href="?run={esc(parent)}">{esc(parent[:8])}</a> at token '
            f'{started.parent_position}: greyed text is inherited, the marked token was picked there '
            f'({esc(repr(visible(started.chosen or "")))}).</div>')


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
.dp-tok.dp-tip-left:hover::after { left: auto; right: 0; }
.dp-text[data-run] .dp-tok { cursor: pointer; }
.dp-inherited { color: #999; }
.dp-branch-point { border-left: 3px solid #7b3fe4; background: #ece3fb; border-radius: 3px; padding: 1px 2px; }
.dp-branch-note { color: #5a2ea6; font-size: 12px; margin-bottom: 6px; }
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


# Tooltips open leftwards where opening rightwards would leave the screen (or the text's right third):
# decided on hover, when the tooltip's own width can be read.
TOOLTIP_JS = """
document.addEventListener('mouseover', (e) => {
  const tok = e.target.closest ? e.target.closest('.dp-tok') : null;
  if (!tok) return;
  const r = tok.getClientRects()[0] || tok.getBoundingClientRect();   // a wrapped token: its first line holds the tip
  const box = (tok.closest('.dp-output') || document.body).getBoundingClientRect();
  const width = parseFloat(getComputedStyle(tok, '::after').width) || 280;
  const rightThird = r.left - box.left > box.width * 2 / 3;
  tok.classList.toggle('dp-tip-left', rightThird || r.left + width > window.innerWidth - 8);
});
"""
