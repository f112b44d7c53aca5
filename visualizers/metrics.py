"""The metrics panel: the numbers the runner measured, laid out as a table, and the run's record
(what re-running it needs). Notices are drawn above the output text (text.notices_html)."""

from __future__ import annotations

from playground.events import ErrorEvent, Event, MetricsEvent, RunStarted, StatsEvent

from .text import esc

# Labels that say how each number is defined (the README uses the same words).
DECODE_RATE = "decode tokens / s (tokens after the first, over seconds after the prompt pass)"
OLD_DECODE_RATE = "decode tokens / s (recorded before prefill was timed: after the first token)"
TRAFFIC = "weight traffic, target + draft (GB/s)"
OLD_TRAFFIC = "weight traffic, target only (GB/s; recorded before draft passes were counted)"
PROMPT_IDS_SHOWN = 4         # the first and last few ids in the summary line


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    return f"{value:,}"


def _fmt_stat(value) -> str:
    """A method's own number: counts arrive as floats (StatsEvent values), shown whole (4, not 4.000)."""
    if isinstance(value, float) and value.is_integer() and abs(value) >= 2:
        return f"{int(value):,}"
    return _fmt(value)


LOSSLESS = {(True, False): "greedy is the reference", (False, True): "yes, for these parameters",
            (False, False): "no, for these parameters", (True, True): "greedy is the reference"}


def record_rows(start: RunStarted) -> list[tuple[str, str]]:
    rows = [("method", start.strategy), ("model", f"{start.model_id} ({start.dtype})")]
    if start.lossless is not None:
        rows.append(("output equals greedy (lossless)", LOSSLESS[start.strategy == "greedy", start.lossless]))
    if start.params:
        rows.append(("parameters", ", ".join(f"{k}={v}" for k, v in start.params.items())))
    rows.append(("max new tokens", _fmt(start.max_new_tokens)))
    if start.draft_model_id:
        rows.append(("draft model", start.draft_model_id))
    rows += [("chat template", "-" if start.chat is None else "on" if start.chat else "off"),
             ("prompt tokens", _fmt(start.prompt_tokens)), ("seed", _fmt(start.seed))]
    if start.forward:
        rows.append(("forward path (PLAYGROUND_FORWARD)", start.forward))
    if start.torch_threads:
        rows.append(("torch threads", _fmt(start.torch_threads)))
    if start.versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in start.versions.items())))
    return rows


def speed_rows(m: MetricsEvent) -> list[tuple[str, str]]:
    return [
        ("new tokens", _fmt(m.new_tokens)),
        ("time to first token (s)", _fmt(m.time_to_first_token_s)),
        ("time in the method (s)", _fmt(m.elapsed_s)),
        ("prefill: until the prompt pass ended (s)", _fmt(m.prefill_s)),
        ("decode: after the prompt pass (s)", _fmt(m.decode_s)),
        ("tokens / s (all time in the method)", _fmt(m.tokens_per_s)),
        (DECODE_RATE if m.decode_s is not None else OLD_DECODE_RATE, _fmt(m.decode_tokens_per_s)),
        ("speed-up vs greedy (decode)", f"{m.speedup_vs_greedy:.2f}x" if m.speedup_vs_greedy else "-"),
        ("greedy decode tokens / s", _fmt(m.greedy_tokens_per_s)),
        ("greedy reference", m.greedy_reference or "-"),
    ]


def traffic_rows(m: MetricsEvent) -> list[tuple[str, str]]:
    traffic = m.weight_traffic_gb_s if m.weight_traffic_gb_s is not None else m.bandwidth_gb_s
    return [
        ("target forward passes", _fmt(m.forward_passes)),
        ("tokens / target pass", _fmt(m.tokens_per_forward)),
        ("weights read / target pass (MB)", _fmt(m.model_bytes / 1e6)),
        (TRAFFIC if m.weight_traffic_gb_s is not None else OLD_TRAFFIC, _fmt(traffic)),
        ("machine bandwidth, measured (GB/s)", _fmt(m.machine_bandwidth_gb_s)),
        ("share of machine bandwidth", f"{traffic / m.machine_bandwidth_gb_s:.0%}" if m.machine_bandwidth_gb_s else "-"),
    ]


def lane_rows(m: MetricsEvent) -> list[tuple[str, str]]:
    """Many sequences at once: the population's own counts (absent for one-sequence methods)."""
    rows = []
    if m.samples is not None:
        rows += [("samples (lanes started, copies included)", _fmt(m.samples)),
                 ("tokens across all lanes", _fmt(m.lane_tokens)),
                 ("tokens / s across all lanes", _fmt(m.lane_tokens_per_s))]
    if m.reward_forward_passes:
        rows.append(("reward forward passes (scoring, not generating)", _fmt(m.reward_forward_passes)))
    return rows


def metrics_rows(events: list[Event]) -> list[tuple[str, str]]:
    start = next((e for e in events if isinstance(e, RunStarted)), None)
    metrics = next((e for e in reversed(events) if isinstance(e, MetricsEvent)), None)
    rows: list[tuple[str, str]] = record_rows(start) if start else []
    if metrics:
        rows += speed_rows(metrics) + traffic_rows(metrics) + [("stopped by", metrics.stop_reason)]
        if metrics.draft_forward_passes:
            rows.append(("draft forward passes", _fmt(metrics.draft_forward_passes)))
        rows += lane_rows(metrics)
        rows += [(k, _fmt_stat(v)) for k, v in metrics.method.items()]
    else:
        stats = [e for e in events if isinstance(e, StatsEvent)]
        if stats:
            rows += [(k, _fmt_stat(v)) for k, v in stats[-1].values.items()]
    return rows


def prompt_ids_html(start: RunStarted | None) -> str:
    """The templated prompt ids, compactly: the count with the first and last few, the rest folded."""
    ids = start.prompt_ids if start else []
    if not ids:
        return ""
    n = PROMPT_IDS_SHOWN
    shown = ids if len(ids) <= 2 * n else [*ids[:n], "…", *ids[-n:]]
    summary = f"prompt ids ({len(ids)}): {', '.join(map(str, shown))}"
    return (f'<details class="dp-prompt-ids"><summary>{esc(summary)}</summary>'
            f'<code>{esc(", ".join(map(str, ids)))}</code></details>')


def metrics_html(events: list[Event]) -> str:
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in metrics_rows(events))
    errors = "".join(f'<div class="dp-notice">{esc(e.message)}</div>' for e in events if isinstance(e, ErrorEvent))
    running = "" if any(isinstance(e, MetricsEvent) for e in events) else "<div><i>running…</i></div>"
    start = next((e for e in events if isinstance(e, RunStarted)), None)
    return f'{errors}{running}<table class="dp-metrics">{rows}</table>{prompt_ids_html(start)}'
