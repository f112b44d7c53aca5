"""Branching from a token: the branch reads the parent's prompt + the tokens before the position +
the chosen token(s); continued with the parent's own token it reproduces the parent (the machinery
changes nothing); it is saved with its parent and position and re-renders alone; bad run ids,
positions and tokens are refused with a message."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from playground.branching import branch_point, chosen_ids, make_branch, parse_pick
from playground.events import RunStarted, TokenEvent
from playground.models import LoadedModel
from playground.runner import GenerationRequest, InvalidRequest, generate
from storage import default_repository
from visualizers import render
from tests.conftest import TinyTokenizer


class Tokenizer(TinyTokenizer):
    """The tiny tokenizer, callable like a transformers one (the runner encodes a plain prompt so)."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": self.encode(text)}


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return LoadedModel("tiny", tiny_model, Tokenizer(), "float64", 0.0)


def tokens(events) -> list[int]:
    return [e.token_id for e in events if isinstance(e, TokenEvent)]


def saved_run(loaded, max_new=16, strategy="greedy", **params):
    events = generate(GenerationRequest(" t5 t17 t33", strategy=strategy, params=params, max_new_tokens=max_new,
                                        chat=False), loaded)
    return default_repository().save(events), events


def branch(loaded, run_id, position, choice=None, typed="", max_new=16, strategy="greedy", **params):
    point = branch_point(run_id, position)
    choice = point.token.token_id if choice is None else choice
    ids, notice = chosen_ids(point, str(choice), typed, loaded.tokenizer)
    request = GenerationRequest(point.started.prompt, strategy=strategy, params=params, max_new_tokens=max_new,
                                chat=False, branch=make_branch(point, ids, loaded.tokenizer))
    return generate(request, loaded), notice


@pytest.mark.parametrize("position", [0, 5, 14])
def test_continuing_with_the_parents_own_token_reproduces_the_parent(tiny, position):
    run_id, parent = saved_run(tiny)
    ids = tokens(parent)
    events, _ = branch(tiny, run_id, position, max_new=len(ids) - position - 1)
    assert ids[:position + 1] + tokens(events) == ids


def test_a_lossless_method_continues_a_greedy_branch_exactly(tiny):
    """Any method continues: prompt lookup (lossless) from a greedy run's token 4 gives greedy's tokens."""
    run_id, parent = saved_run(tiny)
    ids = tokens(parent)
    events, _ = branch(tiny, run_id, 4, max_new=11, strategy="prompt_lookup")
    assert ids[:5] + tokens(events) == ids


def test_another_token_starts_from_the_inherited_tokens_plus_it(tiny):
    run_id, parent = saved_run(tiny)
    ids, started = tokens(parent), parent[0]
    point = branch_point(run_id, 6)
    other = next(a.token_id for a in point.token.alternatives if a.token_id != ids[6])
    events, _ = branch(tiny, run_id, 6, choice=other, max_new=4)
    record = events[0]
    assert record.prompt_ids == started.prompt_ids + ids[:6] + [other]
    assert (record.parent_id, record.parent_position, record.prefix_ids, record.chosen_ids) == (run_id, 6, ids[:6], [other])
    with torch.no_grad():                                    # it really continued from there
        logits = tiny.model(torch.tensor([record.prompt_ids])).logits[0, -1]
    assert tokens(events)[0] == int(logits.argmax())


def test_a_branch_is_saved_with_its_parent_and_re_renders_alone(tiny):
    run_id, parent = saved_run(tiny)
    events, _ = branch(tiny, run_id, 3, max_new=5)
    branch_id = default_repository().save(events)
    row = default_repository().get(branch_id)
    assert (row.parent_id, row.parent_position) == (run_id, 3)
    html = render(default_repository().events(branch_id)).text_html
    inherited = "".join(e.text for e in parent if isinstance(e, TokenEvent) and e.index < 3)
    assert f'<span class="dp-inherited" title="inherited from the parent run">{inherited}</span>' in html
    chosen = next(e.text for e in parent if isinstance(e, TokenEvent) and e.index == 3)
    assert f'title="the branch point: the token picked here">{chosen}</span>' in html
    assert f'href="?run={run_id}"' in html and "at token 3" in html
    assert f'data-run="{branch_id}"' in html and html.count('class="dp-tok"') == 5


def test_a_branch_of_a_branch_inherits_the_whole_prefix(tiny):
    run_id, parent = saved_run(tiny)
    ids = tokens(parent)
    first, _ = branch(tiny, run_id, 2, max_new=8)
    first_id = default_repository().save(first)
    second, _ = branch(tiny, first_id, 3, max_new=4)
    record = second[0]
    assert record.prefix_ids == ids[:2] + [ids[2]] + tokens(first)[:3]
    assert record.prompt_ids == parent[0].prompt_ids + record.prefix_ids + record.chosen_ids
    assert ids[:3] + tokens(first)[:4] + tokens(second) == ids[:3 + 4 + 4]     # still greedy's own path


def test_typed_text_of_several_tokens_is_added_whole_and_said(tiny):
    run_id, _ = saved_run(tiny)
    events, notice = branch(tiny, run_id, 1, typed=" alpha beta", max_new=3)
    typed = TinyTokenizer().encode(" alpha beta")
    assert events[0].chosen_ids == typed and len(typed) == 2
    assert notice == "The typed text ' alpha beta' is 2 tokens; all of them were added."


@pytest.mark.parametrize("pick, message", [
    ("", "Click a token"), ("abc:1", "Click a token"), (None, "Click a token"),
    ("0" * 32 + ":-1", "Click a token"), ("0" * 32 + ":1", "No saved run"),
])
def test_bad_picks_are_refused(pick, message):
    with pytest.raises(InvalidRequest, match=message):
        branch_point(*parse_pick(pick))


def test_bad_positions_and_tokens_are_refused(tiny):
    run_id, parent = saved_run(tiny, max_new=6)
    for position in (6, 1000, -1, "2", True):
        with pytest.raises(InvalidRequest, match="is not in this run: it has 6 tokens"):
            branch_point(run_id, position)
    point = branch_point(run_id, 2)
    outside = next(i for i in range(96) if i not in {a.token_id for a in point.token.alternatives})
    with pytest.raises(InvalidRequest, match="not among this position's alternatives"):
        chosen_ids(point, str(outside), "", tiny.tokenizer)
    with pytest.raises(InvalidRequest, match="Pick one of the alternatives"):
        chosen_ids(point, "<b>x</b>", "", tiny.tokenizer)
    with pytest.raises(InvalidRequest, match="at most 200"):
        chosen_ids(point, None, "x" * 201, tiny.tokenizer)
    with pytest.raises(InvalidRequest, match="at most 16"):
        chosen_ids(point, None, " a" * 17, tiny.tokenizer)


def test_a_run_still_going_is_refused(tiny):
    events = generate(GenerationRequest(" t5", max_new_tokens=2, chat=False), tiny)
    started = dataclasses.replace(events[0], run_id="f" * 32)
    default_repository().start(started)
    with pytest.raises(InvalidRequest, match="not saved yet"):
        branch_point("f" * 32, 0)


def test_branch_ids_outside_the_vocabulary_are_refused(tiny):
    run_id, _ = saved_run(tiny, max_new=4)
    point = branch_point(run_id, 1)
    bad = dataclasses.replace(make_branch(point, [5], tiny.tokenizer), prompt_ids=[5, 96])
    with pytest.raises(InvalidRequest, match="vocabulary"):
        generate(GenerationRequest("x", chat=False, branch=bad), tiny)


def test_the_pages_branch_path_on_the_embedded_model(embedded):
    """The handler's own path (playground/ui/branch.py): the form's method on the parent's model; the
    run's own token reproduces greedy, a typed token is encoded with the run's tokenizer."""
    from playground.ui.branch import branch_run, choices
    from playground.runner import execute

    events = generate(GenerationRequest("Name three colours.", max_new_tokens=8), embedded)
    run_id = default_repository().save(events)
    ids = tokens(events)
    form = GenerationRequest("ignored: the parent's prompt is used", strategy="greedy", max_new_tokens=4,
                             model_id="ignored", dtype="bfloat16")
    point = branch_point(run_id, 3)
    assert choices(point)[0][1] == str(ids[3]) and "rank 1" in choices(point)[0][0]
    prepared = branch_run(f"{run_id}:3", str(ids[3]), "", form)
    assert prepared.loaded is embedded and prepared.request.prompt == "Name three colours."
    assert ids[:4] + tokens(list(execute(prepared))) == ids
    typed = branch_run(f"{run_id}:3", str(ids[3]), " Purple", form)
    assert typed.prompt_ids[-1:] == embedded.tokenizer.encode(" Purple", add_special_tokens=False)
    several = branch_run(f"{run_id}:3", "", " Purple and gold", form)       # said on the run's own record
    assert "is 3 tokens; all of them were added" in list(execute(several))[0].notices[-1]
    with pytest.raises(InvalidRequest, match="No saved run"):
        branch_run("a" * 32 + ":0", "1", "", form)


def test_a_branch_view_escapes_what_it_inherited():
    """Inherited text, the picked token and the parent id come from a model or an imported file: shown as text."""
    hostile = "<img src=x onerror=alert(1)>"
    started = RunStarted("b" * 32, "m", "float32", "greedy", {}, 0, "p", 3, 4, parent_id='"><script>x</script>',
                         parent_position=2, prefix=hostile, prefix_ids=[1], chosen=hostile, chosen_ids=[2])
    html = render([started]).text_html
    assert "<img" not in html and "<script" not in html and html.count("&lt;img src=x onerror=alert(1)&gt;") == 3
