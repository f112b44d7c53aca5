"""The strategy registry: one line per decoding method. Families live in sub-packages: sampling/,
search/, speculative/ (each with its shared machinery in its own modules)."""

from __future__ import annotations

from .base import InvalidParameter, Param, StopRun, Strategy
from .sampling.ancestral import Sampling
from .sampling.greedy import Greedy
from .sampling.top_h import TopH
from .scaling.adaptive import Adaptive
from .scaling.best_of_n import BestOfN
from .scaling.entropic_pf import EntropicParticleFilter
from .scaling.first_finish import FirstFinish
from .scaling.particle_filter import ParticleFilter
from .scaling.self_consistency import SelfConsistency
from .search.a_star import AStar
from .search.beam import BeamSearch
from .search.step_beam import StepBeam
from .single_pass.adadec import AdaDec
from .single_pass.exact_extract import ExactExtract
from .single_pass.momentum import Momentum
from .single_pass.superposed import Superposed
from .speculative.dyspec import DySpec
from .speculative.early_exit import EarlyExit
from .speculative.prompt_lookup import PromptLookup
from .speculative.rasd import RASD
from .speculative.rsd import RecursiveSpeculative
from .speculative.rsd_s import StochasticBeamRSD
from .speculative.speculative_sampling import SpeculativeSampling
from .speculative.spectr import SpecTr
from .speculative.token_recycling import TokenRecycling

REGISTRY: dict[str, type[Strategy]] = {cls.name: cls for cls in (
    Greedy,
    Sampling,
    TopH,
    BeamSearch,
    AStar,
    StepBeam,
    PromptLookup,
    TokenRecycling,
    RASD,
    DySpec,
    SpeculativeSampling,
    EarlyExit,
    RecursiveSpeculative,
    StochasticBeamRSD,
    SpecTr,
    BestOfN,
    ParticleFilter,
    EntropicParticleFilter,
    SelfConsistency,
    FirstFinish,
    Adaptive,
    AdaDec,
    Momentum,
    ExactExtract,
    Superposed,
)}


class UnknownStrategy(KeyError):
    def __str__(self) -> str:
        return f"unknown method {self.args[0]!r}; available: {', '.join(REGISTRY)}"


def get_strategy(name: str) -> type[Strategy]:
    if name not in REGISTRY:
        raise UnknownStrategy(name)
    return REGISTRY[name]


__all__ = ["REGISTRY", "get_strategy", "InvalidParameter", "Param", "StopRun", "Strategy", "UnknownStrategy"]
