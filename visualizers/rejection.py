"""Why a draft was rejected, and how far each layer already agrees with the full model.

- rejection_figure: at the latest rejection of a sampling-mode speculative round, the target p and
  the draft q side by side over the tokens that mattered, with the residual the recovered token was
  actually drawn from shaded behind them. That is norm(max(0, p - q)) for one candidate only; after
  K rejected siblings (RSD, RSD-S, DySpec) it is p updated K times, and for SpecTr the K-SEQ
  residual norm(max(0, p - min(q, p/rho) c)). The verifier records which (VerifyEvent.rejection
  "residual_rule"), and the panel says it.
- layer_acceptance_figure: DEL's per-layer agreement alpha_l ("logit lens" acceptance), the
  tokens-per-layer each exit layer would give, plain decoding's TPL, and this round's exit layer.
"""

from __future__ import annotations

import plotly.graph_objects as go

from playground.events import Event, LayerAcceptanceEvent, VerifyEvent

from .layout import LEGEND_BELOW, margins
from .text import plot_text, visible

LAYOUT = dict(height=340, margin=margins(top=50), legend=LEGEND_BELOW)


def _latest(events: list[Event], kind: type, where=lambda e: True):
    return next((e for e in reversed(events) if isinstance(e, kind) and where(e)), None)


def rejection_figure(events: list[Event]) -> go.Figure | None:
    verify = _latest(events, VerifyEvent, lambda e: bool(e.rejection))
    if verify is None:
        return None
    r = verify.rejection
    labels = [f"{plot_text(repr(visible(t)))} #{i}" for t, i in zip(r["texts"], r["token_ids"])]
    draft = r.get("draft_token")
    rejected = set(r.get("rejected_tokens") or [draft])
    recovered = r.get("recovered_token")
    rule = r.get("residual_rule", "norm(max(0, p - q))")
    count = len(rejected)
    drawn_from = ("residual the recovered token was drawn from" if count == 1
                  else f"residual the recovered token was drawn from (after {count} rejected candidates)")
    fig = go.Figure()
    fig.add_trace(go.Bar(x=labels, y=r["residual"], name=drawn_from, width=0.9,
                         marker=dict(color="rgba(148, 103, 189, 0.25)",
                                     line=dict(color=["#000000" if t == recovered else "#9467bd"
                                                      for t in r["token_ids"]],
                                               width=[3 if t == recovered else 1 for t in r["token_ids"]])),
                         hovertemplate="%{x}<br>residual %{y:.3f}<br>" + plot_text(rule) + "<extra></extra>"))
    fig.add_trace(go.Bar(x=labels, y=r["p"], name="target p", width=0.35, offset=-0.38, marker_color="#2ca02c",
                         hovertemplate="%{x}<br>p %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Bar(x=labels, y=r["q"], name="draft q", width=0.35, offset=0.03,
                         marker=dict(color=["#d62728" if t in rejected else "#1f77b4" for t in r["token_ids"]]),
                         hovertemplate="%{x}<br>q %{y:.3f}<extra></extra>"))
    names = [label for label, t in zip(labels, r["token_ids"]) if t in rejected]
    position = r.get("position")
    what = (f": {', '.join(names)} (red) {'was' if len(names) == 1 else 'were'} rejected" if names else "")
    fig.update_layout(
        title=dict(text=f"Rejection in round {verify.step}"
                        + (f", draft position {position + 1}" if position is not None else "") + what
                        + f"<br><sup>recovered token (outlined) drawn from {plot_text(rule)}</sup>"),
        barmode="overlay", yaxis_title="probability", xaxis_tickangle=-30,
        **{**LAYOUT, "margin": dict(LAYOUT["margin"], t=70)})        # room for the subtitle
    return fig


def layer_acceptance_figure(events: list[Event]) -> go.Figure | None:
    event = _latest(events, LayerAcceptanceEvent)
    if event is None:
        return None
    layers = list(range(1, len(event.alpha) + 1))
    fig = go.Figure()
    fig.add_trace(go.Bar(x=layers, y=event.alpha, name="agreement alpha_l with the full model",
                         marker_color=["#2ca02c" if layer == event.exit_layer else "#1f77b4" for layer in layers],
                         customdata=event.samples,
                         hovertemplate="layer %{x}<br>alpha %{y:.3f}<br>%{customdata:.1f} decayed observations"
                                       "<extra></extra>"))
    fig.add_trace(go.Scatter(x=layers, y=event.tpl, name="best tokens per layer (TPL) drafting from l", yaxis="y2",
                             mode="lines+markers", line=dict(color="#ff7f0e"),
                             hovertemplate="layer %{x}<br>TPL %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[layers[0], layers[-1]], y=[event.baseline_tpl] * 2, yaxis="y2", mode="lines",
                             name="plain decoding TPL", line=dict(color="#ff7f0e", dash="dot")))
    chosen = f"exit layer {event.exit_layer}, {event.draft_length} drafts" if event.exit_layer else "no draft"
    fig.update_layout(title=f"Per-layer acceptance (logit lens), round {event.step}: {chosen}",
                      xaxis=dict(title="exit after layer", dtick=max(1, len(layers) // 15)),
                      yaxis=dict(title="alpha", range=[0, 1.02]),
                      yaxis2=dict(title="TPL", overlaying="y", side="right", rangemode="tozero"), **LAYOUT)
    return fig
