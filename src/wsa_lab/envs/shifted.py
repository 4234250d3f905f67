"""The coverage env on shifted instances: the coverage-only conditions of the evaluation suites (:mod:`wsa_lab.suites`)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from .cities import city_instance
from .coverage import CoverageEnv
from .instances import knn_neighbors

#: GeoNames file used when a country condition names no ``min_population``.
DEFAULT_MIN_POPULATION = 15000


class ShiftedCoverageEnv(CoverageEnv):
    """:class:`CoverageEnv` whose instances come from a shifted source: the coverage-only conditions.

    ``reset(seed)`` plays the same instances for the same seed, like the coverage env's own, so the generic
    evaluation path (``play``, ``reference_returns``) serves these conditions too:

    - ``demand_sigma``: the generator's instances with the demand redrawn right after them from the env's
      generator, weights ``exp(sigma * N(0, 1))`` normalised to sum 1 (positions equal those of a plain
      ``CoverageEnv`` with the same seed);
    - ``country``: a fixed instance, the country's ``num_nodes`` most populous cities (cities with at least
      ``min_population`` inhabitants), population share as demand, in every env of the batch.

    Other arguments: :class:`CoverageEnv`'s.
    """

    def __init__(
        self,
        demand_sigma: Optional[float] = None,
        country: Optional[str] = None,
        min_population: int = DEFAULT_MIN_POPULATION,
        **kwargs: Any,
    ) -> None:
        if demand_sigma is not None and demand_sigma < 0:
            raise ValueError(f"demand_sigma must be >= 0, got {demand_sigma}")
        if demand_sigma is not None and country is not None:
            raise ValueError("demand_sigma does not apply to city instances (demand = population)")
        self.demand_sigma, self.country, self.min_population = demand_sigma, country, min_population
        self._city: Optional[tuple[Tensor, Tensor]] = None
        super().__init__(**kwargs)

    def _sample(self, count: int) -> tuple[Tensor, Tensor, Tensor]:
        """(pos [count, N, 2], demand [count, N], neighbors [count, N, k]) from the shifted source."""
        if self.country is not None:
            if self._city is None:  # loaded once (CoverageEnv's constructor resets: num_nodes is set by then)
                city = city_instance(self.country, self.num_nodes, self.min_population)
                self._city = (city.pos.unsqueeze(0).to(self.device), city.demand.unsqueeze(0).to(self.device))
            # copies (repeat, not expand): the env writes its instances in place when it autoresets
            pos, demand = self._city[0].repeat(count, 1, 1), self._city[1].repeat(count, 1)
            return pos, demand, knn_neighbors(pos, self.knn_k)
        pos, demand, neighbors = super()._sample(count)
        if self.demand_sigma is not None:  # redraw demand only: positions stay those of the default demand
            g = self._generator
            weights = torch.exp(self.demand_sigma * torch.randn(pos.shape[:2], generator=g, device=g.device))
            demand = (weights / weights.sum(dim=1, keepdim=True)).to(device=self.device, dtype=torch.float32)
        return pos, demand, neighbors
