"""The views of many sequences (lanes), on event lists written here: each figure holds the data the
events say, is absent when the run has none, escapes model text, and a saved run draws the same."""

from __future__ import annotations

import dataclasses
import json

from playground.events import (LaneEvent, LaneTokenEvent, PopulationEvent, RunStarted, TokenEvent, TreeEvent,
                               TreeNode, from_dicts, to_dicts)
from visualizers import PANELS, render
from visualizers.population import (ancestry_figure, ess_figure, lane_views, lanes_html, race_figure, votes_figure,
                                    weights_figure)

XSS = "<img src=x onerror=alert(1)>"
LANE_PANELS = ("weights", "ess", "ancestry", "votes", "race")


def tok(lane, index, text, step=0):
    return LaneTokenEvent(lane=lane, index=index, token_id=10 + index, text=text, logprob=-0.5, entropy=1.0, step=step)


def particle_run():
    """Four particles, two steps. Step 1: lane 2 (the XSS text, answer 5) is resampled away, lane 0 is copied
    into lane 4. Step 2 (tempered): lane 4 wins; answers 7, 7, 9, 7 (a dropped lane does not vote)."""
    ev = [RunStarted("r", "m", "float32", "any", {}, 0, "q", 3, 48)]
    ev += [LaneEvent("spawn", i, 0) for i in range(4)]
    ev += [tok(0, 0, "a", 1), tok(1, 0, "b", 1), tok(2, 0, XSS, 1), tok(3, 0, "d", 1)]
    ev += [tok(0, 1, "a", 1), tok(1, 1, "b", 1), tok(3, 1, "d", 1)]
    ev += [LaneEvent("score", i, 1, reward=r, answer="5" if i == 2 else "") for i, r in enumerate((0.9, 0.5, 0.1, 0.4))]
    ev += [PopulationEvent(1, [0, 1, 2, 3], [0.9, 0.5, 0.1, 0.4], [0.4, 0.3, 0.1, 0.2], 3.33,
                           survivors=[0, 0, 1, 3], finished=[False] * 4, note="resampled (ESS 3.3 < N/2)")]
    ev += [LaneEvent("spawn", 4, 1, parent=0)]
    ev += [tok(0, 2, " x=7", 2), tok(4, 2, " x=7", 2), tok(1, 2, " x=9", 2), tok(3, 2, " x=7", 2), tok(4, 3, "!", 2)]
    ev += [LaneEvent("finish", 4, 2, reason="eos")]
    ev += [LaneEvent("score", i, 2, reward=r, answer=a) for i, r, a in ((0, 0.6, "7"), (4, 0.8, "7"), (1, 0.2, "9"),
                                                                          (3, 0.3, "7"))]
    ev += [PopulationEvent(2, [0, 4, 1, 3], [0.6, 0.8, 0.2, 0.3], [0.3, 0.5, 0.05, 0.15], 2.9, temperature=0.5,
                           finished=[False, True, False, False], note="kept")]
    ev += [LaneEvent("chosen", 4, 2, answer="7")]
    return ev


def test_lane_views_replay_texts_copies_and_fates():
    lanes = lane_views(particle_run())
    assert sorted(lanes) == [0, 1, 2, 3, 4]
    assert lanes[0].text == "aa x=7" and lanes[4].text == "aa x=7!"        # a copy starts from its parent's text
    assert lanes[4].parent == 0 and lanes[4].tokens == 4 and lanes[4].chosen
    assert lanes[2].fate == "dropped" and lanes[2].last == 1
    assert lanes[4].fate == "finished" and lanes[4].reason == "eos"


def test_weights_heat_map_holds_the_weights_and_marks_resampling():
    events = particle_run()
    heat = weights_figure(events).data[0]
    steps = [e for e in events if isinstance(e, PopulationEvent)]
    assert list(heat.x) == [1, 2]
    assert [[row[j] for row in heat.z] for j in range(2)] == [p.weights for p in steps]   # z[slot][step]
    assert [row[0] for row in heat.text] == ["\u00d72", "", "\u00d70", ""]          # lane 0 copied, lane 2 dropped
    assert "lane 2" in heat.hovertext[2][0] and "reward 0.1" in heat.hovertext[2][0]
    marks = weights_figure(events).layout.annotations
    assert [m.x for m in marks] == [1]                                           # only step 1 resampled
    assert len(weights_figure(events).data) == 1 and list(heat.y) == [0, 1, 2, 3]   # no phantom slot


def test_ess_against_half_n_with_temperature():
    fig = ess_figure(particle_run())
    ess, half, temperature = fig.data
    assert list(ess.y) == [3.33, 2.9] and list(half.y) == [2, 2] and half.line.dash == "dash"
    assert list(temperature.y) == [1.0, 0.5] and temperature.yaxis == "y2"
    untempered = [dataclasses.replace(e, temperature=1.0) if isinstance(e, PopulationEvent) else e
                  for e in particle_run()]
    assert len(ess_figure(untempered).data) == 2                                 # no temperature axis
    one_step = [e for e in particle_run() if not (isinstance(e, PopulationEvent) and e.step == 2)]
    assert ess_figure(one_step) is None and weights_figure(one_step) is None   # one scoring: the cards say it


def test_ancestry_has_one_node_per_lane_and_edges_to_parents():
    fig = ancestry_figure(particle_run())
    nodes = [t for t in fig.data if t.mode == "markers+text"]
    assert sorted(int(x) for t in nodes for x in t.text) == [0, 1, 2, 3, 4]
    assert {t.name: sorted(int(x) for x in t.text) for t in nodes} == {"chosen": [4], "dropped": [2], "live": [0, 1, 3]}
    rows = {int(lane): y for t in nodes for lane, y in zip(t.text, t.y)}
    thick = fig.data[1]                                        # the chosen line: lane 4 and its parent 0
    assert thick.line.width == 4
    segments = list(zip(thick.x, thick.y))
    assert (1, rows[0]) in segments and (1, rows[4]) in segments               # the edge 0 -> 4 at step 1
    hover = json.dumps(fig.to_plotly_json(), default=str)
    assert "<img" not in hover and "&lt;img src=x onerror=alert(1)&gt;" in hover


def test_vote_histogram_counts_and_agreement():
    fig = votes_figure(particle_run())
    bars = fig.data[0]
    assert list(bars.x) == ["7", "9"] and list(bars.y) == [3, 1]
    assert bars.marker.color[0] == "#2ca02c"                                     # the chosen answer
    assert "3 of 4" in fig.layout.title.text and "75%" in fig.layout.title.text


def test_race_shows_final_lengths_and_the_winner():
    fig = race_figure(particle_run())
    lines = {t.name: t for t in fig.data if t.mode == "lines"}
    assert {name: t.y[-1] for name, t in lines.items()} == {"lane 0": 3, "lane 1": 3, "lane 2": 1, "lane 3": 3,
                                                            "lane 4 (chosen)": 4}
    assert lines["lane 4 (chosen)"].line.width == 4
    finished = fig.data[-1]
    assert list(finished.y) == [4] and finished.customdata[0][0] == 4
    assert list(lines["lane 0"].x) == [1, 2, 3]                                  # one step per batched forward


def test_absent_without_lane_events():
    plain = [RunStarted("r", "m", "float32", "greedy", {}, 0, "q", 3, 8),
             TokenEvent(0, 5, "a", -0.1, 1.2, [])]
    for key in LANE_PANELS:
        assert render(plain).figures[key] is None, key
    assert lanes_html(plain) == "" and "dp-lane" not in render(plain).text_html
    one_lane = [LaneEvent("spawn", 0, 0), tok(0, 0, "a"), LaneEvent("finish", 0, 0, reason="eos")]
    assert race_figure(one_lane) is None and votes_figure(one_lane) is None and weights_figure(one_lane) is None
    assert ancestry_figure(one_lane) is None and "lane 0" in lanes_html(one_lane)   # no copies: no family tree


def test_tree_panel_stays_out_of_lane_runs_and_draws_a_star_steps():
    assert render(particle_run()).figures["tree"] is None
    step = "Step 2: multiply both sides by 3, so 3x = 21 and " + XSS + " Then divide by 3: x = 7."
    nodes = [TreeNode(0, None, 0, "Step 1: read the problem.", 0.0, status="kept", label="f=1.0 g=0.5 h=0.5"),
             TreeNode(1, 0, 0, step, -1.0, status="chosen", label="f=0.9 g=0.6 h=0.3")]
    fig = render([TreeEvent(2, nodes, chosen=1)]).figures["tree"]
    assert "<img" not in json.dumps(fig.to_plotly_json(), default=str)
    chosen = next(t for t in fig.data if t.name == "chosen")
    assert chosen.customdata[-1][0].count("<br>") == 1                      # a long step wraps on hover
    assert chosen.customdata[-1][2] == "f=0.9 g=0.6 h=0.3" and chosen.customdata[-1][3] == ""   # no logprob: no line
    search_root = TreeNode(0, None, -1, "(prompt)", 0.5, status="kept", label="f=0.5 g=0 h=0.5")
    fig = render([TreeEvent(1, [search_root, nodes[1]], chosen=1)]).figures["tree"]
    assert "prompt" not in [t.name for t in fig.data]         # the search's own root is the prompt: one root


def test_lanes_html_shows_every_lane_escaped():
    html_out = render(particle_run()).text_html
    assert html_out.index("dp-output") < html_out.index("dp-lanes")              # under the (empty) answer
    assert html_out.count('class="dp-lane ') == 5
    assert "<img" not in html_out and "&lt;img src=x onerror=alert(1)&gt;" in html_out
    assert "lanes below are decoding" in html_out                                # no answer committed yet
    order = [int(x.split('"')[0]) for x in html_out.split('data-lane="')[1:]]
    assert order == [0, 1, 3, 4, 2]                                               # the dropped lane last
    card = html_out.split('data-lane="4"')[1].split('data-lane=')[0]
    assert "\u2190 0" in card and "chosen" in card and "answer 7" in card and "aa x=7!" in card


def test_saved_run_renders_the_same():
    events = particle_run()
    again = from_dicts(json.loads(json.dumps(to_dicts(events))))
    assert [e.to_dict() for e in again] == [e.to_dict() for e in events]
    first, second = render(events), render(again)
    assert first.text_html == second.text_html
    for panel in PANELS:
        a, b = first.figures[panel.key], second.figures[panel.key]
        assert (a is None) == (b is None)
        if a is not None:
            assert a.to_plotly_json() == b.to_plotly_json(), panel.key
    assert all(first.figures[k] is not None for k in LANE_PANELS)


def test_one_step_ancestry_shows_each_lane_by_its_length():
    """Samples forked side by side in one step (adaptive sampling forks each sample from the prompt's row):
    the ancestry's x is each lane's length in tokens."""
    events = [LaneEvent("spawn", 0, 0), LaneEvent("spawn", 1, 0, parent=0)]
    events += [tok(0, i, "a") for i in range(3)] + [tok(1, i, "b") for i in range(5)]
    events += [LaneEvent("finish", 0, 0, reason="eos"), LaneEvent("prune", 1, 0, reason="another lane finished first"),
               LaneEvent("chosen", 0, 0)]
    fig = ancestry_figure(events)
    ends = {int(lane): x for t in fig.data if t.mode == "markers+text" for lane, x in zip(t.text, t.x)}
    assert ends == {0: 3, 1: 5} and fig.layout.xaxis.title.text == "tokens"


def test_fates_after_finishing_copying_and_the_end_of_the_run():
    """Seen in a browser tour: copies of a finished particle were shown 'live', a finished particle later
    resampled away only 'pruned', and lanes still 'live' after the run had ended."""
    from playground.events import MetricsEvent

    events = [LaneEvent("spawn", 0, 0), LaneEvent("spawn", 1, 0), tok(0, 0, "8"), tok(1, 0, "x"),
              LaneEvent("finish", 0, 1, reason="eos"), LaneEvent("spawn", 2, 1, parent=0),
              LaneEvent("prune", 0, 2, reason="resampled away")]
    lanes = lane_views(events)
    assert (lanes[2].fate, lanes[2].reason, lanes[2].text) == ("finished", "eos", "8")
    assert (lanes[0].fate, lanes[0].reason) == ("pruned", "finished (eos), then resampled away")
    assert lanes[1].fate == "live"
    ended = lane_views(events + [MetricsEvent(1, 1.0, None, 1.0, 1, 1.0, 0, 0.0, None, "stopped")])
    assert (ended[1].fate, ended[1].reason) == ("unfinished", "the run ended first")
