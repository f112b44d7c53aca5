"""The strategy registry: one line per decoding method."""

from __future__ import annotations

from .base import InvalidParameter, Param, Strategy
from .beam import BeamSearch
from .early_exit import EarlyExit
from .dyspec import DySpec
from .greedy import Greedy
from .prompt_lookup import PromptLookup
from .rasd import RASD
from .rsd import RecursiveSpeculative
from .rsd_s import StochasticBeamRSD
from .sampling import Sampling
from .speculative import SpeculativeSampling
from .spectr import SpecTr
from .token_recycling import TokenRecycling
from .top_h import TopH

REGISTRY: dict[str, type[Strategy]] = {cls.name: cls for cls in (
    Greedy,
    Sampling,
    TopH,
    BeamSearch,
    PromptLookup,
    TokenRecycling,
    RASD,
    DySpec,
    SpeculativeSampling,
    EarlyExit,
    RecursiveSpeculative,
    StochasticBeamRSD,
    SpecTr,
)}


class UnknownStrategy(KeyError):
    def __str__(self) -> str:
        return f"unknown method {self.args[0]!r}; available: {', '.join(REGISTRY)}"


def get_strategy(name: str) -> type[Strategy]:
    if name not in REGISTRY:
        raise UnknownStrategy(name)
    return REGISTRY[name]


__all__ = ["REGISTRY", "get_strategy", "InvalidParameter", "Param", "Strategy", "UnknownStrategy"]
