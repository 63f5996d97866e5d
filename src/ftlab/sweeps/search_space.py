"""The search space of ``hparams_search=optuna``: Optuna distributions from Hydra's sweep
overrides (``hydra.sweeper.params``), the overrides every trial shares, and the seeds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from ftlab.errors import FtlabError

SEED_KEY = "seed"


@dataclass
class SearchSpace:
    """Optuna distributions per override key, plus the overrides every trial gets unchanged."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)
    # The override key as typed ("+x", "++x") and, for choices, each value's text as typed.
    keys: dict[str, str] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """A trial's overrides: the fixed ones, then its sampled values."""
        chosen = []
        for name, dist in self.distributions.items():
            value = params[name]
            if isinstance(dist, CategoricalDistribution):
                value = self.texts[name][dist.to_internal_repr(value)]
            chosen.append(f"{self.keys[name]}={value}")
        return [*self.fixed, *chosen]

    def fixed_keys(self) -> dict[str, str]:
        """``{key: override}`` of the fixed overrides."""
        parsed = OverridesParser.create().parse_overrides(self.fixed)
        return {o.key_or_group: o.input_line for o in parsed}


def search_space(params: Mapping[str, str], arguments: Sequence[str]) -> SearchSpace:
    """The space from the config's ``params`` (key: sweep expression) and the command line.

    Expressions use Hydra's override grammar: ``choice(a,b)``, ``range(1,5)``,
    ``interval(0.0,0.5)``, ``tag(log, interval(1e-5,1e-2))``, ``tag(int, interval(8,64))``.
    A command-line argument replaces a ``params`` entry of the same key; a plain value fixes it.
    """
    texts = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    by_key: dict[str, Override] = {}
    for override in OverridesParser.create().parse_overrides(texts):
        by_key.pop(override.key_or_group, None)  # the later (command line) wins, in its place
        by_key[override.key_or_group] = override
    space = SearchSpace()
    for name, override in by_key.items():
        if override.is_sweep_override():
            space.distributions[name] = _distribution(override)
            space.keys[name] = override.get_key_element()
            if isinstance(override.value(), ChoiceSweep):
                space.texts[name] = list(override.sweep_string_iterator())
        else:
            space.fixed.append(override.input_line)
    return space


def _distribution(override: Override) -> BaseDistribution:
    sweep = override.value()
    tags = sweep.tags
    if isinstance(sweep, IntervalSweep):
        if "int" in tags:
            return IntDistribution(int(sweep.start), int(sweep.end), log="log" in tags)
        return FloatDistribution(sweep.start, sweep.end, log="log" in tags)
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        kind = IntDistribution if all(isinstance(v, int) for v in values) else FloatDistribution
        return kind(values[0], values[-1], step=sweep.step)
    if isinstance(sweep, ChoiceSweep):
        values = list(override.sweep_iterator())
        plain = all(v is None or isinstance(v, bool | int | float | str) for v in values)
        # Lists and dicts are not valid Optuna choices: their override text stands in.
        return CategoricalDistribution(values if plain else list(override.sweep_string_iterator()))
    raise FtlabError(f"{override.input_line}: Optuna search needs choice, range or interval")


def check_seeds(seeds: Sequence[int] | None, space: SearchSpace) -> list[int]:
    """``hydra.sweeper.seeds`` as a list ([] when off); refused next to ``seed`` in the space."""
    if not seeds:
        return []
    if SEED_KEY in space.distributions or SEED_KEY in space.fixed_keys():
        where = "searched" if SEED_KEY in space.distributions else "fixed"
        raise FtlabError(
            f"hydra.sweeper.seeds={list(seeds)} runs every trial once per seed, but seed is also "
            f"{where} by this command: drop seed from the search (or the command line), or drop "
            "hydra.sweeper.seeds"
        )
    return list(seeds)
