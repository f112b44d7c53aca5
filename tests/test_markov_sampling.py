"""The sampling-mode speculative methods, end to end on a synthetic Markov "model", against the exact law.

Glossary:
- Markov model: a logits table (V, V); row t is the next-token law after token t, whatever came
  before. TARGET is the model sampled from, DRAFT a different table that proposes.
- round: one real `grow` (the method's own drafting code, fed the DRAFT table's rows through a
  DraftCache that reads a table instead of running a transformer) and one real `accept` (the method's
  own verifier and acceptance rule) on the TARGET table's rows for the tree's nodes. Nothing of the
  drafting or acceptance logic is re-implemented here; only the two forward passes are replaced.
- first two tokens: what a run from ROOT emits first; a round that emits one token is followed
  by a second round from that token, as the real loop does. Their exact joint law is
  P(a | ROOT) P(b | a) under the warped TARGET.
- control: the same check on a deliberately broken variant of the real code (monkeypatched: the
  draft update of recursive rejection removed, siblings verified in reverse order, K-SEQ with
  rho = 1, ...). Each must FAIL the check, or the check could not catch the bug it guards.

The check is Pearson chi-square (test_speculative_sampling.chi_square_fails: cells expected < 10
pooled, critical value at p ~ 1e-4) on the first token (6 cells) and on the first two (36 cells).
Seeds are fixed, so every number is reproducible; each control's docstring says what it breaks.
At 1500 runs the check flags a first-token law whose chi-square divergence from the target's is about
0.015 or more (e.g. TV ~ 0.04 spread over two tokens); the controls sit 3 to 25 times over the bar.
"""

from __future__ import annotations

import pytest
import torch
from test_speculative_sampling import chi_square_fails

from strategies import REGISTRY
from strategies.speculative import acceptance, dyspec
from strategies.speculative.drafters import DraftCache
from strategies.speculative.tree import DraftTree
from strategies.speculative.verify import make_warp, probabilities

pytestmark = pytest.mark.usefixtures("one_thread")

V, ROOT = 6, 0


# The tables are built so each classic bug moves the first token's law a lot (their exact effects were
# computed by enumeration when the tables were chosen; the controls below measure them):
# - after ROOT the draft's favourite is token 5 (q = 0.65), which the target rarely picks (p = 0.05):
#   the first candidate is usually rejected, so what a later sibling is compared against (the draft
#   update, the sibling order, rho) and the residual decide most of the output;
# - deeper, the draft follows another law (Q_REST, rotated by the last token) whose best children
#   have path values 0.65 * 0.30 = 0.195 and 0.65 * 0.25 = 0.16 below token 5: about the q of ROOT's
#   second-best token (3, q = 0.2) and well above the others (0.05). So whether ROOT gets a second
#   child is a close call, and ranking a DRAWN sibling by its own q (DySpec's pitfall) keeps it when it
#   is token 3 and drops it otherwise: the second sibling no longer follows "q without the first".
P_ROOT = (0.20, 0.15, 0.20, 0.30, 0.10, 0.05)
Q_ROOT = (0.05, 0.05, 0.00, 0.20, 0.05, 0.65)
Q_REST = (0.30, 0.20, 0.25, 0.00, 0.20, 0.05)


def _rotated(row: tuple[float, ...]) -> torch.Tensor:
    """(V, V) whose row t is `row` rotated by t: after every token the same shape of law, shifted."""
    base = torch.tensor(row, dtype=torch.float64)
    return torch.stack([base.roll(t) for t in range(V)])


TARGET = _rotated(P_ROOT).log()                                   # logits (V, V)
DRAFT = torch.cat([torch.tensor([Q_ROOT], dtype=torch.float64), _rotated(Q_REST)[1:]]).log()   # logits (V, V);
                                                                  # log 0 = -inf: tokens the draft never proposes


class MarkovSession:
    """What grow needs of a session: no EOS in this vocabulary."""

    def is_eos(self, token: int) -> bool:
        return False


class TableDrafts(DraftCache):
    """The draft's side of a round served from DRAFT: the logits after a node are its token's row.
    next_level (and so RSD's and SpecTr's level-by-level growth) is DraftCache's own."""

    def __init__(self, table: torch.Tensor):
        self.table, self.fed = table, 0

    def start(self, root: int) -> torch.Tensor:
        self.fed = 1
        return self.table[root]                                   # (V,)

    def extend(self, tree: DraftTree) -> torch.Tensor:
        rows = self.table[tree.tokens[self.fed:]]                  # (m, V): the nodes not fed yet
        self.fed = len(tree)
        return rows

    def keep(self, tree: DraftTree, path: list[int]) -> None:
        self.fed = 0


def exact_law(warp) -> torch.Tensor:
    """(V, V): P(first = a, second = b) = P(a | ROOT) P(b | a) under the warped target."""
    p = probabilities(TARGET, warp)
    return p[ROOT][:, None] * p


def first_two_tokens(strategy, rounds: int, seed: int) -> tuple[torch.Tensor, float]:
    """Counts (V, V) of the first two tokens over `rounds` independent runs from ROOT, each one or two
    rounds of the strategy's real grow + accept; and the share of first rounds that accepted a draft."""
    warp = make_warp(strategy.p)
    strategy.drafts = TableDrafts(DRAFT)
    if "gamma" in strategy.p:
        strategy.length = strategy.p["gamma"]                      # speculative: its prefill sets this
    session = MarkovSession()
    draft_gen, verify_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)

    def play(root: int) -> list[int]:
        draft = strategy.grow(session, root, 16, warp, draft_gen)
        verdict = strategy.accept(draft, TARGET[draft.tree.tokens], warp, verify_gen)
        strategy.drafts.keep(draft.tree, verdict.path)
        return verdict.proposed(draft.tree)

    counts, accepted = torch.zeros(V, V, dtype=torch.float64), 0
    for _ in range(rounds):
        emitted = play(ROOT)
        accepted += len(emitted) > 1                                # a draft was accepted
        if len(emitted) < 2:
            emitted += play(emitted[0])
        counts[emitted[0], emitted[1]] += 1
    return counts, accepted / rounds


def verdict_numbers(counts: torch.Tensor, law: torch.Tensor) -> dict:
    """counts, law (V, V). "first" / "pair": the chi-square statistic over its critical value (p ~ 1e-4)
    for the first token and for the first two (under 1: consistent with the target); the raw
    statistics, critical values and total variations alongside, for messages and reports."""
    first, first_law = counts.sum(1), law.sum(1)
    n = float(counts.sum())
    one, one_bar = chi_square_fails(first, first_law)
    two, two_bar = chi_square_fails(counts.flatten(), law.flatten())
    return {"first": one / one_bar, "pair": two / two_bar, "chi2_first": one, "critical_first": one_bar,
            "chi2_pair": two, "critical_pair": two_bar,
            "tv_first": 0.5 * float((first / n - first_law).abs().sum()),
            "tv_pair": 0.5 * float((counts / n - law).abs().sum())}


def passes(numbers: dict) -> bool:
    return numbers["first"] < 1 and numbers["pair"] < 1


@pytest.fixture(autouse=True)
def rho_once(monkeypatch):
    """kseq_rho is a pure function of (p, q, k), and a Markov table offers only a few distinct (p, q):
    cache the real function's answers, since its 60-step bisection is most of a SpecTr round."""
    kseq_rho, known = acceptance.kseq_rho, {}

    def cached(p, q, k):
        key = (p.numpy().tobytes(), q.numpy().tobytes(), k)
        if key not in known:
            known[key] = kseq_rho(p, q, k)
        return known[key]

    monkeypatch.setattr(acceptance, "kseq_rho", cached)


# --- the methods and their broken variants ---------------------------------------------------------

def without_residual(monkeypatch):
    """Speculative sampling that resamples from p itself, not from norm(max(0, p - q)), on a rejection."""
    monkeypatch.setattr(acceptance, "residual", lambda p, q: torch.broadcast_tensors(p, q)[0].double())


def without_draft_update(monkeypatch):
    """Recursive rejection that leaves q as it was after a rejected sibling (no q_k = remove(q_k, x))."""
    monkeypatch.setattr(acceptance, "_remove", lambda dist, token: dist)


def siblings_drawn_reversed(monkeypatch):
    """RSD-C adding each node's Gumbel-top-k children last first: verified in reverse sampling order."""
    gumbel_top_k = acceptance.gumbel_top_k
    monkeypatch.setattr(acceptance, "gumbel_top_k", lambda q, k, generator: gumbel_top_k(q, k, generator).flip(-1))


def siblings_verified_reversed(monkeypatch):
    """The tree verifier running recursive rejection over a node's children last first."""
    recursive_rejection = acceptance.recursive_rejection

    def reversed_order(p, q, candidates, generator):
        out = recursive_rejection(p, q, candidates.flip(-1), generator)
        index = torch.where(out.index >= 0, candidates.shape[-1] - 1 - out.index, out.index)   # back to tree order
        return acceptance.Outcome(index, out.token, out.residual)

    monkeypatch.setattr(acceptance, "recursive_rejection", reversed_order)


def kseq_rho_one(monkeypatch):
    """K-SEQ with rho = 1 whatever k: accepts each i.i.d. candidate as if it were the only one."""
    monkeypatch.setattr(acceptance, "kseq_rho", lambda p, q, k: torch.ones(1, dtype=torch.float64))


def ranking_drawn_tokens(monkeypatch):
    """DySpec growth that draws a sibling as soon as its slot opens and ranks it by its own q
    (test_dyspec_sampling.drawn_value_tree, the greedy rule applied to sampled children)."""
    from test_dyspec_sampling import drawn_value_tree

    monkeypatch.setattr(dyspec, "sample_draft_tree", lambda *args: drawn_value_tree(*args[:8]))   # no is_eos


# label -> (method, parameters, {control name: control}); small trees keep a round near a millisecond.
# DySpec runs twice: budget 3 with one child per expansion makes ROOT's second child the close call
# the ranking rule decides; a wider tree gives ROOT several children, where the draft update matters.
METHODS = {
    "speculative": ("speculative", dict(gamma=2, adaptive=False), {"without the residual": without_residual}),
    "rsd": ("rsd", dict(branching="3,3"), {"without the draft update": without_draft_update,
                                           "siblings in reverse order": siblings_drawn_reversed}),
    "rsd_s": ("rsd_s", dict(beam_width=3, draft_depth=2), {"without the draft update": without_draft_update,
                                                           "siblings in reverse order": siblings_verified_reversed}),
    "spectr": ("spectr", dict(num_drafts=3, draft_length=2), {"rho = 1": kseq_rho_one}),
    "dyspec": ("dyspec", dict(budget=3, width=1, branching=3, max_depth=2),
               {"ranking drawn tokens by q": ranking_drawn_tokens}),
    "dyspec wide": ("dyspec", dict(budget=6, width=2, branching=3, max_depth=3),
                    {"without the draft update": without_draft_update}),
}
ROUNDS = 1500
TEMPERATURE = 1.0


def measure(label: str, rounds: int = ROUNDS, seed: int = 0) -> dict:
    name, params, _ = METHODS[label]
    strategy = REGISTRY[name](temperature=TEMPERATURE, **params)
    counts, accepted = first_two_tokens(strategy, rounds, seed)
    return {**verdict_numbers(counts, exact_law(make_warp(strategy.p))), "accepted_first": accepted}


@pytest.mark.parametrize("label", list(METHODS))
def test_first_two_tokens_follow_the_target(label):
    numbers = measure(label)
    assert passes(numbers), numbers
    assert 0.1 < numbers["accepted_first"] < 0.9, numbers         # both the accept and the reject paths run


@pytest.mark.parametrize("label,control", [(label, control) for label, (_, _, controls) in METHODS.items()
                                           for control in controls])
def test_broken_variant_is_caught(monkeypatch, label, control):
    """The same check, same rounds and seeds, on the method with one bug put in: it must fail, with room
    (a statistic at least twice its critical value)."""
    METHODS[label][2][control](monkeypatch)
    numbers = measure(label)
    assert numbers["first"] > 2 or numbers["pair"] > 2, numbers
