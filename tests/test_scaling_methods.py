"""Best-of-N, self-consistency and First Finish Search, end to end on the tiny float64 llama (its tokenizer
reads token i as ' t{i}', so a lane's extracted answer is the number of its last token): each method's
invariants from ALGORITHMS.md §13, and agreement with plain sampling when there is one lane."""

from __future__ import annotations

import itertools
import math

import pytest

from playground.decoding import DecodeSession
from playground.events import LaneEvent, LaneTokenEvent, NoticeEvent, PopulationEvent, StatsEvent, TokenEvent
from playground.lanes import Lanes
from strategies.sampling.ancestral import Sampling
from strategies.scaling import rewards
from strategies.scaling.best_of_n import BestOfN
from strategies.scaling.first_finish import FirstFinish
from strategies.scaling.population import vote
from strategies.scaling.self_consistency import SelfConsistency
from strategies.scaling.steps import Sampler, grow_to_end

PROMPT = [5, 17, 33, 2]
EOS = set(range(60, 70))            # the tiny model has no EOS: these ten ids end a lane (~10% a token)


def run(strategy, model, tokenizer, seed: int, max_new: int, eos: set[int] = frozenset()):
    session = DecodeSession(model, tokenizer, PROMPT, max_new, set(eos), seed)
    return session, list(strategy.decode(session))


def answer_tokens(events) -> list[int]:
    return [e.token_id for e in events if isinstance(e, TokenEvent)]


def lane_events(events, kind: str) -> list[LaneEvent]:
    return [e for e in events if isinstance(e, LaneEvent) and e.kind == kind]


def lane_tokens(events, lane: int) -> list[int]:
    return [e.token_id for e in events if isinstance(e, LaneTokenEvent) and e.lane == lane]


def plain_sampling(model, tokenizer, seed: int, max_new: int, temperature: float) -> list[int]:
    return answer_tokens(run(Sampling(temperature=temperature), model, tokenizer, seed, max_new)[1])


# --- Best-of-N -------------------------------------------------------------------------------------

class Constant(rewards.Reward):
    name, label = "constant", "0.5 for every lane"

    def score(self, lanes, rows, final):
        return [0.5] * len(rows)


def test_best_of_n_with_a_constant_reward_returns_sample_0(tiny_model, tiny_tokenizer, one_thread, monkeypatch):
    monkeypatch.setitem(rewards.REWARDS, "constant", Constant)
    method = BestOfN(n=4, temperature=1.0)
    method.p["reward"] = "constant"
    _, events = run(method, tiny_model, tiny_tokenizer, seed=3, max_new=6)
    assert [e.lane for e in lane_events(events, "chosen")] == [0]
    assert answer_tokens(events) == lane_tokens(events, 0)
    assert len({tuple(lane_tokens(events, lane)) for lane in range(4)}) > 1   # the samples differ


@pytest.mark.parametrize("reward", ["confidence", "certainty"])
def test_best_of_n_returns_a_lane_with_the_maximum_reward(tiny_model, tiny_tokenizer, one_thread, reward):
    _, events = run(BestOfN(n=5, reward=reward, temperature=1.0), tiny_model, tiny_tokenizer, seed=1, max_new=6)
    scores = {e.lane: e.reward for e in lane_events(events, "score")}
    [chosen] = lane_events(events, "chosen")
    assert chosen.reward == max(scores.values()) and len(set(scores.values())) > 1
    assert chosen.lane == min(lane for lane, r in scores.items() if r == max(scores.values()))
    assert answer_tokens(events) == lane_tokens(events, chosen.lane)


def test_best_of_1_is_plain_sampling(tiny_model, tiny_tokenizer, one_thread):
    _, events = run(BestOfN(n=1, temperature=0.8), tiny_model, tiny_tokenizer, seed=7, max_new=10)
    assert answer_tokens(events) == plain_sampling(tiny_model, tiny_tokenizer, 7, 10, 0.8)


# --- self-consistency ------------------------------------------------------------------------------

def test_vote_returns_the_mode_and_ties_go_to_the_first_answer():
    assert vote(["3", "5", "5", "", "3", "5"]) == ("5", {"3": 2.0, "5": 3.0})
    assert vote(["7", "", "4", "4", "7"])[0] == "7"                        # tie: the answer seen first
    assert vote(["", ""]) == ("", {})
    assert vote(["3", "5", "5"], [0.9, 0.2, 0.3])[0] == "3"               # weights outvote counts


def test_permuting_the_samples_never_changes_the_vote():
    answers, weights = ["8", "2", "8", "", "9", "2", "8"], [0.1, 0.5, 0.1, 0.9, 0.3, 0.4, 0.2]
    for order in itertools.permutations(range(len(answers))):
        assert vote([answers[i] for i in order])[0] == "8"
        assert vote([answers[i] for i in order], [weights[i] for i in order])[0] == "2"   # 0.9 vs 0.4 vs 0.3


def test_self_consistency_commits_a_lane_with_the_majority_answer(tiny_model, tiny_tokenizer, one_thread):
    # seed 0 at T = 0.3: the answers are 83, 47, 52, 52, 52, so the winner is not lane 0's answer
    _, events = run(SelfConsistency(n=5, temperature=0.3), tiny_model, tiny_tokenizer, seed=0, max_new=3)
    answers = [e.answer for e in lane_events(events, "score")]
    winner, tally = vote(answers)
    [chosen] = lane_events(events, "chosen")
    assert chosen.answer == winner and chosen.lane == answers.index(winner) != 0
    assert answer_tokens(events) == lane_tokens(events, chosen.lane)
    assert tiny_tokenizer.decode(answer_tokens(events)).endswith(f"t{winner}")
    [population] = [e for e in events if isinstance(e, PopulationEvent)]
    assert population.weights == pytest.approx([0.2] * 5)
    [stats] = [e for e in events if isinstance(e, StatsEvent)]
    assert stats.values["agreement"] == pytest.approx(tally[winner] / 5) and tally[winner] > 1


def test_self_consistency_tie_goes_to_the_first_answer(tiny_model, tiny_tokenizer, one_thread):
    # seed 2 at T = 0.5: answers 17, 22, 17, 22, 37: two votes each for 17 and 22, 17 seen first
    _, events = run(SelfConsistency(n=5, temperature=0.5), tiny_model, tiny_tokenizer, seed=2, max_new=3)
    answers = [e.answer for e in lane_events(events, "score")]
    counts = sorted((answers.count(a) for a in set(answers)), reverse=True)
    assert counts[0] == counts[1]                                          # a real tie
    assert lane_events(events, "chosen")[0].lane == 0


def test_likelihood_weighting_sums_exp_mean_logprob_per_answer(tiny_model, tiny_tokenizer, one_thread):
    # seed 11 at T = 0.5: answers 52, 58, 52, 37, 66, 37; one vote each would pick 52 (a tie, seen first)
    _, events = run(SelfConsistency(n=6, weighting="likelihood", temperature=0.5), tiny_model, tiny_tokenizer,
                    seed=11, max_new=3)
    answers = [e.answer for e in lane_events(events, "score")]
    likelihoods = []
    for lane in range(6):
        logprobs = [e.logprob for e in events if isinstance(e, LaneTokenEvent) and e.lane == lane]
        likelihoods.append(math.exp(sum(logprobs) / len(logprobs)))
    totals = {a: sum(w for b, w in zip(answers, likelihoods) if b == a) for a in answers}
    [chosen] = lane_events(events, "chosen")
    assert chosen.answer == max(totals, key=totals.get) != vote(answers)[0]
    [population] = [e for e in events if isinstance(e, PopulationEvent)]
    assert population.weights == pytest.approx([w / sum(likelihoods) for w in likelihoods])


def test_reward_weighting_sums_the_reward_per_answer(tiny_model, tiny_tokenizer, one_thread):
    _, events = run(SelfConsistency(n=6, weighting="reward", reward="certainty", temperature=0.5), tiny_model,
                    tiny_tokenizer, seed=11, max_new=3)
    scored = lane_events(events, "score")
    totals: dict[str, float] = {}
    for e in scored:
        totals[e.answer] = totals.get(e.answer, 0.0) + e.reward
    assert lane_events(events, "chosen")[0].answer == max(totals, key=totals.get)
    assert [e.weight for e in scored] == pytest.approx([e.reward / sum(totals.values()) for e in scored])


def test_self_consistency_of_one_chain_is_plain_sampling(tiny_model, tiny_tokenizer, one_thread):
    _, events = run(SelfConsistency(n=1, temperature=0.7), tiny_model, tiny_tokenizer, seed=9, max_new=10)
    assert answer_tokens(events) == plain_sampling(tiny_model, tiny_tokenizer, 9, 10, 0.7)


class WordsTokenizer:
    """Token i reads as a word with no digits: nothing to vote on."""

    eos_token_id = None
    chat_template = None

    def decode(self, ids, skip_special_tokens=False):
        return "".join(" w" + "abcdefghij"[int(i) % 10] for i in ids)


def test_self_consistency_without_answers_says_so_and_returns_lane_0(tiny_model, one_thread):
    _, events = run(SelfConsistency(n=3, temperature=1.0), tiny_model, WordsTokenizer(), seed=0, max_new=4)
    assert any(isinstance(e, NoticeEvent) and e.key == "no answers" for e in events)
    assert lane_events(events, "chosen")[0].lane == 0
    assert answer_tokens(events) == lane_tokens(events, 0)


# --- First Finish Search ---------------------------------------------------------------------------

def all_to_completion(model, tokenizer, seed: int, n: int, max_new: int, temperature: float) -> list[list[int]]:
    """The n traces of the same seed, every lane run until it ends (no lane stops the others)."""
    session = DecodeSession(model, tokenizer, PROMPT, max_new, set(EOS), seed)
    lanes = Lanes(session, n)
    list(grow_to_end(lanes, Sampler({"temperature": temperature}, session.generator)))
    return [lane.tokens if lane.finished == "eos" else None for lane in lanes.lanes]


@pytest.mark.parametrize("seed", range(6))
def test_first_finish_is_the_shortest_trace_run_to_completion(tiny_model, tiny_tokenizer, one_thread, seed):
    n, max_new = 4, 40
    session, events = run(FirstFinish(n=n, temperature=1.0), tiny_model, tiny_tokenizer, seed, max_new, EOS)
    traces = all_to_completion(tiny_model, tiny_tokenizer, seed, n, max_new, 1.0)
    finished = [(len(t), i) for i, t in enumerate(traces) if t is not None]
    assert finished, "some lane must end with EOS for this test to say anything"
    shortest, lane = min(finished)                                          # ties: the lowest index
    assert answer_tokens(events) == traces[lane]
    assert lane_events(events, "chosen")[0].lane == lane
    assert session.lane_tokens <= n * shortest
    pruned = lane_events(events, "prune")
    assert sorted(e.lane for e in pruned) == [i for i in range(n) if i != lane]
    assert all(e.reason == "another lane finished first" for e in pruned)


def test_first_finish_with_a_tie_takes_the_lowest_lane(tiny_model, tiny_tokenizer, one_thread):
    """Every token ends a lane (all ids are EOS): all lanes finish in the first step; lane 0 wins."""
    session = DecodeSession(tiny_model, tiny_tokenizer, PROMPT, 10, set(range(96)), 0)
    events = list(FirstFinish(n=3, temperature=1.0).decode(session))
    assert len(lane_events(events, "finish")) == 3 and lane_events(events, "chosen")[0].lane == 0
    assert session.lane_tokens == 3


def test_first_finish_without_a_finish_returns_lane_0_and_says_so(tiny_model, tiny_tokenizer, one_thread):
    session, events = run(FirstFinish(n=3, temperature=1.0), tiny_model, tiny_tokenizer, seed=0, max_new=5)
    assert any(isinstance(e, NoticeEvent) and e.key == "none finished" for e in events)
    assert lane_events(events, "chosen")[0].lane == 0
    assert answer_tokens(events) == lane_tokens(events, 0) and len(answer_tokens(events)) == 5


def test_first_finish_of_one_lane_is_plain_sampling(tiny_model, tiny_tokenizer, one_thread):
    session = DecodeSession(tiny_model, tiny_tokenizer, PROMPT, 30, set(EOS), 4)
    ffs = answer_tokens(FirstFinish(n=1, temperature=1.0).decode(session))
    plain = DecodeSession(tiny_model, tiny_tokenizer, PROMPT, 30, set(EOS), 4)
    assert ffs == answer_tokens(Sampling(temperature=1.0).decode(plain))
