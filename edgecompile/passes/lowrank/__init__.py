"""Low-rank factorization: pure decompositions (`decompose`), rank selection (`rank`), and the
graph pass (`factorize.LowRankPass`) with its rewrites (`rewrite`)."""

from .decompose import (NotEligibleError, Tucker2Factors, factor_modes, svd_factors, tt_decompose,
                        tt_reconstruct, tucker2)
from .factorize import LowRankConfig, LowRankConfigError, LowRankPass
from .rank import (BudgetError, LayerSpectrum, RankSpec, RankSpecError, budget_ranks, effective_rank,
                   energy_rank, fraction_rank, max_useful_rank, parse_rank_spec, singular_values)

__all__ = [
    "NotEligibleError", "Tucker2Factors", "factor_modes", "svd_factors", "tt_decompose",
    "tt_reconstruct", "tucker2", "LowRankConfig", "LowRankConfigError", "LowRankPass",
    "BudgetError", "LayerSpectrum", "RankSpec", "RankSpecError", "budget_ranks", "effective_rank",
    "energy_rank", "fraction_rank", "max_useful_rank", "parse_rank_spec", "singular_values",
]
