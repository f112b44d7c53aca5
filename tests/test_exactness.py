"""Lossless methods equal transformers' own decoding on a tiny float64 llama, token for token."""

from __future__ import annotations

import pytest
import torch

from playground.decoding import DecodeSession
from playground.events import TokenEvent, TreeEvent
from strategies import REGISTRY

PROMPTS = [[5, 17, 33], [1, 2, 3, 4, 5, 6, 7, 8], [90], [42, 42, 42, 7]]


def run_strategy(model, tokenizer, name, prompt, max_new=24, eos=(), seed=0, **params):
    session = DecodeSession(model, tokenizer, prompt, max_new, set(eos), seed)
    events = list(REGISTRY[name](**params).decode(session))
    return [e.token_id for e in events if isinstance(e, TokenEvent)], events, session


def hf(model, prompt, max_new=24, eos=None, **kwargs):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, eos_token_id=eos,
                         pad_token_id=0, **kwargs)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_generate(tiny_model, tiny_tokenizer, prompt):
    ours, _, session = run_strategy(tiny_model, tiny_tokenizer, "greedy", prompt)
    assert ours == hf(tiny_model, prompt, do_sample=False)
    assert session.forward_passes == len(ours)         # prefill + one pass per further token


def test_greedy_stops_at_eos(tiny_model, tiny_tokenizer):
    free, _, _ = run_strategy(tiny_model, tiny_tokenizer, "greedy", PROMPTS[0])
    eos = free[5]
    ours, _, _ = run_strategy(tiny_model, tiny_tokenizer, "greedy", PROMPTS[0], eos=[eos])
    assert ours == free[: free.index(eos) + 1] == hf(tiny_model, PROMPTS[0], eos=eos, do_sample=False)


@pytest.mark.parametrize("beams,penalty,stopping", [(1, 1.0, "heuristic"), (2, 1.0, "heuristic"), (3, 1.0, "heuristic"),
                                                    (4, 0.0, "heuristic"), (3, 2.0, "never"), (3, -1.0, "true")])
@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_beam_equals_generate(tiny_model, tiny_tokenizer, prompt, beams, penalty, stopping):
    greedy, _, _ = run_strategy(tiny_model, tiny_tokenizer, "greedy", prompt, max_new=12)
    for eos in (None, greedy[2]):                       # with no EOS, and with one the search will meet
        ours, events, _ = run_strategy(tiny_model, tiny_tokenizer, "beam", prompt, max_new=12,
                                       eos=[] if eos is None else [eos], num_beams=beams,
                                       length_penalty=penalty, early_stopping=stopping)
        early = {"heuristic": False, "true": True, "never": "never"}[stopping]
        ref = hf(tiny_model, prompt, max_new=12, eos=eos, num_beams=beams, do_sample=False,
                 length_penalty=penalty, early_stopping=early)
        if eos is not None and eos in ref:              # generate pads after EOS
            ref = ref[: ref.index(eos) + 1]
        assert ours == ref, (eos, ours, ref)
        trees = [e for e in events if isinstance(e, TreeEvent)]
        assert trees and trees[0].reset and trees[-1].chosen is not None


def test_beam_tree_is_connected_and_chosen_path_is_the_answer(tiny_model, tiny_tokenizer):
    ours, events, _ = run_strategy(tiny_model, tiny_tokenizer, "beam", PROMPTS[1], max_new=8, num_beams=3)
    nodes = {n.id: n for e in events if isinstance(e, TreeEvent) for n in e.nodes}
    assert all(n.parent is None or n.parent in nodes for n in nodes.values())
    chosen = next(e.chosen for e in events if isinstance(e, TreeEvent) and e.chosen is not None)
    path = []
    while chosen is not None:
        path.append(nodes[chosen].token_id)
        chosen = nodes[chosen].parent
    assert path[::-1] == ours


@pytest.mark.parametrize("stop_after", [1, 3, 6])
def test_beam_stopped_mid_run_commits_its_best_hypothesis(tiny_model, tiny_tokenizer, stop_after):
    """Beam search commits only at the end; a Stop after `stop_after` steps used to save 0 tokens.
    Without EOS every beam is still running then, so the best hypothesis is the best running beam:
    exactly what generate(num_beams) returns when its length limit is that step."""
    from playground.events import NoticeEvent
    from strategies import StopRun

    session = DecodeSession(tiny_model, tiny_tokenizer, PROMPTS[1], 12, set(), 0)
    stream = REGISTRY["beam"](num_beams=3).decode(session)
    events, trees = [], 0
    for event in stream:
        events.append(event)
        trees += isinstance(event, TreeEvent)
        if trees == stop_after:
            events += [stream.throw(StopRun())] + list(stream)
            break
    ours = [e.token_id for e in events if isinstance(e, TokenEvent)]
    assert ours == hf(tiny_model, PROMPTS[1], max_new=stop_after, num_beams=3, do_sample=False)
    assert ours == session.output_ids
    notice = next(e for e in events if isinstance(e, NoticeEvent))
    assert notice.message.startswith("Stopped: the output is the best running (unfinished) hypothesis")
