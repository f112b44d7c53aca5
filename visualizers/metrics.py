"""The metrics panel: the numbers the runner measured, laid out as a table."""

from __future__ import annotations

from playground.events import ErrorEvent, Event, MetricsEvent, RunStarted, StatsEvent

from .text import esc


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    return f"{value:,}"


def metrics_rows(events: list[Event]) -> list[tuple[str, str]]:
    start = next((e for e in events if isinstance(e, RunStarted)), None)
    metrics = next((e for e in reversed(events) if isinstance(e, MetricsEvent)), None)
    rows: list[tuple[str, str]] = []
    if start:
        rows += [("method", start.strategy), ("model", f"{start.model_id} ({start.dtype})"),
                 ("prompt tokens", _fmt(start.prompt_tokens)), ("seed", _fmt(start.seed))]
    if metrics:
        rows += [
            ("new tokens", _fmt(metrics.new_tokens)),
            ("time to first token (s)", _fmt(metrics.time_to_first_token_s)),
            ("decode time (s)", _fmt(metrics.elapsed_s)),
            ("tokens / s", _fmt(metrics.tokens_per_s)),
            ("decode tokens / s (after the first token)", _fmt(metrics.decode_tokens_per_s)),
            ("speed-up vs greedy (decode)", f"{metrics.speedup_vs_greedy:.2f}x"
             if metrics.speedup_vs_greedy else "-"),
            ("greedy decode tokens / s", _fmt(metrics.greedy_tokens_per_s)),
            ("greedy reference", metrics.greedy_reference or "-"),
            ("target forward passes", _fmt(metrics.forward_passes)),
            ("tokens / target pass", _fmt(metrics.tokens_per_forward)),
            ("weights read / pass (MB)", _fmt(metrics.model_bytes / 1e6)),
            ("bandwidth achieved (GB/s)", _fmt(metrics.bandwidth_gb_s)),
            ("machine bandwidth, measured (GB/s)", _fmt(metrics.machine_bandwidth_gb_s)),
            ("share of machine bandwidth", f"{metrics.bandwidth_gb_s / metrics.machine_bandwidth_gb_s:.0%}"
             if metrics.machine_bandwidth_gb_s else "-"),
            ("stopped by", metrics.stop_reason),
        ]
        if metrics.draft_forward_passes:
            rows.append(("draft forward passes", _fmt(metrics.draft_forward_passes)))
        rows += [(k, _fmt(v)) for k, v in metrics.method.items()]
    else:
        stats = [e for e in events if isinstance(e, StatsEvent)]
        if stats:
            rows += [(k, _fmt(v)) for k, v in stats[-1].values.items()]
    return rows


def metrics_html(events: list[Event]) -> str:
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in metrics_rows(events))
    notices = [n for e in events if isinstance(e, RunStarted) for n in e.notices]
    errors = [e.message for e in events if isinstance(e, ErrorEvent)]
    extra = "".join(f'<div class="dp-notice">{esc(n)}</div>' for n in notices + errors)
    running = "" if any(isinstance(e, MetricsEvent) for e in events) else "<div><i>running…</i></div>"
    return f'{extra}{running}<table class="dp-metrics">{rows}</table>'
