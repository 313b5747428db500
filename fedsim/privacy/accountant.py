"""Privacy spent: epsilon at ``privacy.delta`` from dp-accounting's RDP accountant.

Each round is one Gaussian mechanism on the sum of clipped client updates (noise std =
``noise_multiplier`` x clipping norm), applied to a sample of the clients. fedsim samples
exactly ``clients.per_round`` of ``clients.num`` clients without replacement, so ``epsilon``
accounts for that sampling (dp-accounting's ``SampledWithoutReplacementDpEvent``, under its
replace-one neighbouring relation: two federations differ in one client's data).
``poisson_epsilon`` is the figure DP-FedAvg papers usually quote (McMahan et al. 2018):
Poisson sampling at rate per_round / num, add/remove-one; it is not a guarantee for the
sampling fedsim does, and can be far smaller (10 of 100 clients, z = 1, 50 rounds, delta
1e-5: 6.02 as Poisson, 9.43 without replacement). Both are functions of the rounds done
only, so a resumed run reports the same values.
"""

from __future__ import annotations

from functools import lru_cache

# Integer RDP orders: exact for the sampled Gaussian (fractional ones need a series that
# does not always converge) and fine enough for the epsilons of interest.
ORDERS: tuple[int, ...] = (*range(2, 65), 80, 96, 128, 160, 192, 256, 384, 512, 1024)


@lru_cache(maxsize=1024)
def epsilon(
    noise_multiplier: float, num_clients: int, per_round: int, rounds: int, delta: float
) -> float:
    """Epsilon after ``rounds`` rounds of the Gaussian mechanism on ``per_round`` clients
    sampled without replacement from ``num_clients`` (replace-one), at ``delta``."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    if rounds <= 0:
        return 0.0
    accountant = RdpAccountant(
        list(ORDERS), neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        num_clients, per_round, dp_accounting.GaussianDpEvent(noise_multiplier)
    )
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(delta))


@lru_cache(maxsize=1024)
def poisson_epsilon(
    noise_multiplier: float, sampling_rate: float, rounds: int, delta: float
) -> float:
    """The usual approximation: Poisson sampling at ``sampling_rate`` (add/remove-one)."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    if rounds <= 0:
        return 0.0
    accountant = RdpAccountant(list(ORDERS))
    event = dp_accounting.PoissonSampledDpEvent(
        sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
    )
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(delta))
