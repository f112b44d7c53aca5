"""Rewards: one small interface that scores lanes in [0, 1], and the signals a CPU playground has offline.

A reward sees the lanes and the rows to score, and whether the lanes' answers are final (an outcome reward
such as the checker scores only final answers; earlier it is neutral, 0.5). Rewards that run the model do
it through `Lanes.peek` or `session.reward_forward`, so their passes are counted apart from generation
(MetricsEvent.reward_forward_passes). Appendix A of ALGORITHMS.md lists the options and their caveats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from playground.lanes import Lanes

from ..base import InvalidParameter, Param
from .population import CLIP, extract_answer

NEUTRAL = 0.5


class Reward:
    name: ClassVar[str]
    label: ClassVar[str]          # what the score means, in words (shown in the views)
    calls_model: ClassVar[bool] = False

    def __init__(self, values: dict):
        self.values = values

    def score(self, lanes: Lanes, rows: list[int], final: bool) -> list[float]:
        """One score in [0, 1] per row (higher is better)."""
        raise NotImplementedError


def scope_logprobs(lanes: Lanes, row: int, scope: str) -> list[float]:
    """The lane's token log-probs: its current step (tokens since data['step_start']) or the whole trace."""
    lane = lanes.lanes[row]
    start = lane.data.get("step_start", 0) if scope == "step" else 0
    return [d.logprob for d in lane.described[start:]] or [d.logprob for d in lane.described]


class Confidence(Reward):
    """Self-certainty (its_hub's particle filter, no reward model): exp(mean token log-prob) of the step
    or the trace, the geometric-mean probability of its tokens. Free: the log-probs were kept while sampling."""

    name, label = "confidence", "exp(mean token log-prob), the model's own confidence"

    def score(self, lanes, rows, final):
        out = []
        for row in rows:
            logprobs = scope_logprobs(lanes, row, self.values.get("reward_scope", "step"))
            out.append(math.exp(sum(logprobs) / len(logprobs)) if logprobs else NEUTRAL)
        return out


class Certainty(Reward):
    """exp(-mean token entropy): 1 when every token was certain (entropy in nats, untempered)."""

    name, label = "certainty", "exp(-mean token entropy)"

    def score(self, lanes, rows, final):
        out = []
        for row in rows:
            lane = lanes.lanes[row]
            start = lane.data.get("step_start", 0) if self.values.get("reward_scope", "step") == "step" else 0
            entropies = [d.entropy for d in lane.described[start:]] or [d.entropy for d in lane.described]
            out.append(math.exp(-sum(entropies) / len(entropies)) if entropies else NEUTRAL)
        return out


class Checker(Reward):
    """A programmatic verifier for answers that can be checked: the final answer extracted from the text
    (the last \\boxed{} or number) against the reference answer. An outcome reward: it scores final answers
    only, and is neutral before."""

    name, label = "checker", ("1 if the final answer equals the reference answer, else 0; 0.5 (neutral) while the answer is "
                             "not final")

    def __init__(self, values: dict):
        super().__init__(values)
        self.expected = extract_answer(values.get("reference", "")) or values.get("reference", "").strip()
        if not self.expected:
            raise InvalidParameter("the checker needs a reference answer (parameter 'reference')")

    def score(self, lanes, rows, final):
        if not final:
            return [NEUTRAL] * len(rows)
        return [1 - CLIP if extract_answer(lanes.lanes[r].text) == self.expected else CLIP for r in rows]


# --- self-evaluation: P("Yes") to a question about the answer so far -------------------------------
YES_SPELLINGS = ("Yes", " Yes", "yes", " yes")
NO_SPELLINGS = ("No", " No", "no", " no")
DEFAULT_JUDGE_QUESTION = "Is the answer so far correct? Answer Yes or No."
MARK = "\u2063MARK\u2063"       # stands for the lane's text while the chat template is rendered


def first_token_ids(tokenizer, spellings: tuple[str, ...]) -> list[int]:
    """The first token of each spelling, deduplicated in order (the answer can open with any of them)."""
    out: list[int] = []
    for text in spellings:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if ids and ids[0] not in out:
            out.append(int(ids[0]))
    return out


def _template_ids(tokenizer, messages: list[dict], prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=True)
    return [int(i) for i in (ids["input_ids"] if hasattr(ids, "keys") else ids)]


def ends_with_assistant_header(tokenizer, prompt_ids: list[int]) -> bool:
    """Whether the prompt was built with the chat template: it ends with the template's assistant header."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    try:
        user = [{"role": "user", "content": "U"}]
        opened, closed = _template_ids(tokenizer, user, True), _template_ids(tokenizer, user, False)
    except Exception:                                     # a template that cannot render a plain user turn
        return False
    header = opened[len(closed):] if opened[:len(closed)] == closed else []
    return bool(header) and list(prompt_ids[-len(header):]) == header


def judge_chain_text(tokenizer, prompt_ids: list[int], question: str) -> str:
    """The text that follows a lane to ask the judge question: under a chat template it closes the
    assistant turn, asks as the user, and opens the assistant's answer; otherwise plain text."""
    if ends_with_assistant_header(tokenizer, prompt_ids):
        turns = [{"role": "user", "content": "U"}, {"role": "assistant", "content": MARK},
                 {"role": "user", "content": question}]
        rendered = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        if MARK in rendered:
            return rendered.split(MARK, 1)[1]
    return f"\n\n{question}\nAnswer:"


@dataclass(frozen=True)
class Judge:
    """A self-evaluation question as token ids: the chain that follows each lane (closes its turn, asks,
    opens the answer) and the first tokens of the Yes and No answers. Tests build one from explicit ids."""

    chain: tuple[int, ...]
    yes: tuple[int, ...]
    no: tuple[int, ...]

    @classmethod
    def build(cls, tokenizer, prompt_ids: list[int], question: str) -> "Judge":
        text = judge_chain_text(tokenizer, prompt_ids, question)
        chain = tokenizer.encode(text, add_special_tokens=False)
        yes, no = first_token_ids(tokenizer, YES_SPELLINGS), first_token_ids(tokenizer, NO_SPELLINGS)
        if not chain or not yes or not no or set(yes) & set(no):
            raise InvalidParameter("this tokenizer cannot ask the judge question (no distinct Yes/No tokens)")
        return cls(tuple(int(i) for i in chain), tuple(yes), tuple(no))


def yes_probability(lanes: Lanes, rows: list[int], question: "str | Judge") -> list[float]:
    """P(Yes) / (P(Yes) + P(No)) after each row's text and the judge question, for `rows`: ONE peek over
    every lane (rows not asked about ride along in the same pass), the lanes left exactly as they were."""
    judge = question if isinstance(question, Judge) else Judge.build(
        lanes.session.tokenizer, lanes.session.prompt_ids, question)
    chain = list(judge.chain)
    # a lane that ended its turn itself (eos = the template's end of turn) is not closed a second time
    chains = [chain[1:] if lane.tokens and lane.tokens[-1] == chain[0] and len(chain) > 1 else chain
              for lane in lanes.lanes]
    logits = lanes.peek(chains)                                                  # (lanes, V)
    probs = torch.softmax(logits.double(), -1)
    p_yes, p_no = probs[:, list(judge.yes)].sum(-1), probs[:, list(judge.no)].sum(-1)   # (lanes,)
    return [float(p_yes[r] / (p_yes[r] + p_no[r])) if float(p_yes[r] + p_no[r]) > 0 else NEUTRAL for r in rows]


class SelfJudge(Reward):
    """LLM-as-a-judge on the policy itself: P(Yes) to a question about the answer so far, normalised over
    Yes/No (1 extra pass over the cached lanes). Uncalibrated on a 135M model: read it as a ranking at best."""

    name, label = "judge", "the model's own P(Yes) to the judge question (uncalibrated at 135M)"
    calls_model = True

    def __init__(self, values: dict):
        super().__init__(values)
        self.question = values.get("judge_question", DEFAULT_JUDGE_QUESTION).strip() or DEFAULT_JUDGE_QUESTION
        if len(self.question) > 500:
            raise InvalidParameter(f"judge_question is {len(self.question):,} characters; the limit is 500")
        self.judge: Judge | None = None

    def score(self, lanes, rows, final):
        if self.judge is None:
            self.judge = Judge.build(lanes.session.tokenizer, lanes.session.prompt_ids, self.question)
        return yes_probability(lanes, rows, self.judge)


class Reference(Reward):
    """Reference-guided step score (SPARE's idea, simplified): how likely the model finds the user's
    reference answer right after the lane's text and a short bridge, exp(mean log-prob of the reference's
    tokens). Deviation from SPARE: no token alignment of the trace with a reference solution; one peek
    scores every lane's continuation into the reference answer."""

    name, label = "reference", "exp(mean log-prob) of the reference answer after the lane and a bridge"
    calls_model = True
    bridge = "\nThe final answer is"

    def __init__(self, values: dict):
        super().__init__(values)
        self.reference = values.get("reference", "").strip()
        if not self.reference:
            raise InvalidParameter("the reference reward needs a reference answer (parameter 'reference')")

    def chain(self, tokenizer) -> tuple[list[int], int]:
        """The bridge's and the reference's tokens, and where the reference starts."""
        bridge = tokenizer.encode(self.bridge, add_special_tokens=False)
        answer = tokenizer.encode(" " + self.reference, add_special_tokens=False)
        return bridge + answer, len(bridge)

    def score(self, lanes, rows, final):
        chain, start = self.chain(lanes.session.tokenizer)
        return reference_probability(lanes, rows, chain, start)


def reference_probability(lanes: Lanes, rows: list[int], chain: list[int], start: int) -> list[float]:
    """exp(mean log-prob of chain[start:]) after each row's text and chain[:start], in one peek."""
    logits = lanes.peek_all([chain] * len(lanes))                                # (lanes, n, V)
    logp = torch.log_softmax(logits[:, start - 1:len(chain) - 1].double(), -1)   # (lanes, m, V)
    target = torch.tensor(chain[start:])                                         # (m,)
    picked = logp.gather(-1, target[None, :, None].expand(len(lanes), -1, 1))[..., 0]   # (lanes, m)
    return [math.exp(float(picked[r].mean())) for r in rows]


# --- a reward model from the Hub ------------------------------------------------------------------
_HUB_CACHE: dict[str, tuple] = {}          # at most one reward model in memory, keyed by its id


class Classifier(torch.nn.Module):
    """A sequence classifier as `session.reward_forward` calls a model: the generation-only arguments
    (cache, logits_to_keep) are dropped, and having no `config` of its own keeps it off the lean
    forward (playground/lean_forward.py computes a causal LM's head, not a classifier's)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, **_generation_only):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def load_hub_reward(model_id: str):
    """(model, tokenizer) of a sequence-classification reward model, loaded once; fails at once with one
    line (offline and not cached, unknown id, not a classifier). Never runs remote code."""
    if model_id in _HUB_CACHE:
        return _HUB_CACHE[model_id]
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(model_id)
    except Exception as error:
        raise InvalidParameter(f"reward model {model_id!r} cannot be loaded (offline and not cached, or no such "
                               f"model): {str(error).splitlines()[0][:200]}") from None
    architectures = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise InvalidParameter(f"reward model {model_id!r} is not a sequence-classification model "
                               f"(architectures: {', '.join(architectures) or 'none'})")
    if config.num_labels not in (1, 2):
        raise InvalidParameter(f"reward model {model_id!r} has {config.num_labels} labels; a reward needs 1 or 2")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        model = AutoModelForSequenceClassification.from_pretrained(model_id).eval()
    except Exception as error:
        raise InvalidParameter(f"reward model {model_id!r} cannot be loaded: {str(error).splitlines()[0][:200]}") from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    _HUB_CACHE.clear()
    _HUB_CACHE[model_id] = (Classifier(model), tokenizer)
    return _HUB_CACHE[model_id]


class HubReward(Reward):
    """A reward model from the Hub (a sequence classifier: 1 label -> sigmoid, 2 labels -> softmax of the
    second). It reads the prompt's text (special tokens dropped) followed by the lane's text, in its own
    tokenizer; one counted reward pass per scoring, all rows batched."""

    name, label = "hub", "a Hub reward model's P(good) (parameter 'reward_model')"
    calls_model = True

    def __init__(self, values: dict):
        super().__init__(values)
        self.model_id = values.get("reward_model", "").strip()
        if not self.model_id:
            raise InvalidParameter("the hub reward needs a model id (parameter 'reward_model')")
        self.model, self.tokenizer = load_hub_reward(self.model_id)

    def score(self, lanes, rows, final):
        s = lanes.session
        prompt = s.tokenizer.decode(s.prompt_ids, skip_special_tokens=True)
        texts = [prompt + lanes.lanes[r].text for r in rows]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=2048)
        with torch.inference_mode():
            logits, _ = s.reward_forward(batch["input_ids"], last_only=False, model=self.model,
                                         attention_mask=batch["attention_mask"])       # (rows, labels)
        logits = logits.double()
        probs = torch.sigmoid(logits[:, 0]) if logits.shape[-1] == 1 else torch.softmax(logits, -1)[:, 1]
        return [float(p) for p in probs]


REWARDS: dict[str, type[Reward]] = {cls.name: cls for cls in (Confidence, Certainty, Checker, SelfJudge,
                                                              Reference, HubReward)}


def reward_params(default: str = "confidence") -> tuple[Param, ...]:
    """The parameters every method that scores lanes takes (one schema, like the sampling family's)."""
    return (
        Param("reward", "choice", default, choices=tuple(REWARDS),
              help="How lanes are scored: " + "; ".join(f"{n}: {c.label}" for n, c in REWARDS.items()) + "."),
        Param("reward_scope", "choice", "step", choices=("step", "trace"),
              help="confidence / certainty over the latest step or the whole trace."),
        Param("reference", "text", "", high=2000,
              help="A reference answer (the checker compares final answers with it; the reference reward "
                   "scores how likely the model finds it after each lane)."),
        Param("judge_question", "text", DEFAULT_JUDGE_QUESTION, high=500,
              help="judge: the question asked after each lane; the score is P(Yes) normalised over Yes/No. "
                   "Uncalibrated on a 135M model (SmolLM2 was never trained to judge its own answers)."),
        Param("reward_model", "text", "", high=200,
              help="hub: a Hub sequence-classification reward model id (or a local folder). Loaded on first use; "
                   "offline and not cached fails at once. Remote code never runs."),
    )


def make_reward(values: dict) -> Reward:
    return REWARDS[values.get("reward", "confidence")](values)
