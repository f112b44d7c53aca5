"""The strategy protocol: a named class with a parameter schema and a `decode` generator.

The UI builds its controls and the CLI its `--param` flags from `params`; nothing outside a
strategy's own file knows anything about it beyond this protocol.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Iterator

from playground.decoding import DecodeSession, StopRun  # noqa: F401 (StopRun: part of the protocol)
from playground.events import Event


class InvalidParameter(ValueError):
    pass


@dataclass(frozen=True)
class Param:
    name: str
    kind: str                      # "float" | "int" | "bool" | "choice" | "text" (high: its most characters)
    default: Any
    low: float | None = None       # inclusive bounds
    high: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""
    step: float | None = None      # slider step for the UI

    def parse(self, raw: Any) -> Any:
        """Coerce a UI/CLI/JSON value and check its range; raises InvalidParameter in one clear line."""
        try:
            if self.kind == "float":
                value: Any = float(raw)
                if value != value:
                    raise ValueError
            elif self.kind == "int":
                value = int(float(raw)) if not isinstance(raw, bool) else int(raw)
                if float(raw) != value:
                    raise ValueError
            elif self.kind == "text":
                if not isinstance(raw, str):
                    raise ValueError
                value = raw
            elif self.kind == "bool":
                value = raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes", "on")
            else:
                value = str(raw)
        except (TypeError, ValueError):
            raise InvalidParameter(f"{self.name} must be {'an' if self.kind == 'int' else 'a'} {self.kind}, got {raw!r}")
        if self.kind == "text":
            if self.high is not None and len(value) > self.high:
                raise InvalidParameter(f"{self.name} is {len(value):,} characters; the limit is {int(self.high):,}")
            return value
        if self.kind == "choice" and value not in self.choices:
            raise InvalidParameter(f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}")
        if self.low is not None and value < self.low or self.high is not None and value > self.high:
            raise InvalidParameter(f"{self.name} must be between {self.low} and {self.high}, got {value}")
        return value

    def schema(self) -> dict[str, Any]:
        d = asdict(self)
        d["choices"] = list(self.choices)
        return d


class Strategy:
    name: ClassVar[str]
    title: ClassVar[str]
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""          # link to the paper (or the reference implementation)
    lossless: ClassVar[bool] = False   # output equals plain greedy, token for token
    needs_draft: ClassVar[bool] = False  # uses a separate draft model (GenerationRequest.draft_model_id)
    many_sequences: ClassVar[bool] = False  # decodes many lanes and returns one (its cost is N lanes, not one answer)
    free_text: ClassVar[bool] = True        # answers any prompt (False: needs input of its own, e.g. a passage)
    params: ClassVar[tuple[Param, ...]] = ()
    row_params: ClassVar[tuple[str, ...]] = ()   # int parameters whose product is the sequences decoded at once
    tree_params: ClassVar[tuple[str, ...]] = ()  # int parameters whose product bounds the draft tokens a pass adds

    def __init__(self, **values: Any):
        known = {p.name: p for p in self.params}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InvalidParameter(
                f"unknown parameter {unknown[0]!r} for {self.name}; it takes: {', '.join(known) or 'no parameters'}"
            )
        self.p = {name: param.parse(values.get(name, param.default)) for name, param in known.items()}
        self.check()

    @classmethod
    def lossless_help(cls) -> str:
        """What the UI says about losslessness: only what holds, and for which parameters."""
        if not cls.lossless:
            return ""
        if any(p.name == "temperature" for p in cls.params):
            return ("Lossless (output equals greedy) at temperature 0; above it, exact sampling from the "
                    "target's warped distribution.")
        return "Lossless: output equals greedy."

    def is_lossless(self) -> bool:
        """Whether THIS configuration equals plain greedy token for token. Methods with a sampling
        mode are lossless only at temperature 0; greedy itself is the reference, not 'lossless'."""
        return self.lossless and self.p.get("temperature", 0) == 0

    def footprint(self) -> tuple[int, int]:
        """(sequences held at once, draft positions one pass adds to each): with the prompt and the new tokens,
        what the runner's one memory rule (rows x positions, PLAYGROUND_MAX_TOKEN_ROWS) needs to know about
        this configuration, without knowing the method."""
        rows = tree = 1
        for name in self.row_params:
            rows *= int(self.p[name])
        for name in self.tree_params:
            tree *= int(self.p[name])
        return rows, tree if self.tree_params else 0

    def check(self) -> None:
        """Cross-parameter checks (override when a rule spans several parameters)."""

    def own_prompt(self) -> str | None:
        """The prompt this method builds from its own fields (a passage and a question), or None
        to use the request's. The runner records it as the run's prompt."""
        return None

    def decode(self, session: DecodeSession) -> Iterator[Event]:
        raise NotImplementedError

    @classmethod
    def warm_up(cls, session: DecodeSession) -> None:
        """Once per model at start-up, before any visitor (runner.warm_up, after the pass costs): measure what
        this method's decisions read from the model itself, on the session's prompt. Nothing by default."""

    @classmethod
    def schema(cls) -> dict[str, Any]:
        return {
            "name": cls.name,
            "title": cls.title,
            "summary": cls.summary,
            "paper": cls.paper,
            "lossless": cls.lossless,
            "needs_draft": cls.needs_draft,
            "many_sequences": cls.many_sequences,
            "params": [p.schema() for p in cls.params],
        }
