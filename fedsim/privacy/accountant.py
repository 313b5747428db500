"""Privacy spent: epsilon at ``privacy.delta`` from dp-accounting's RDP accountant.

Each round is one Gaussian mechanism on the sum of clipped client updates (noise std =
``noise_multiplier`` x clipping norm), applied to a sample of the clients. fedsim samples a
fixed ``clients.per_round`` of ``clients.num``; the accountant models it as Poisson sampling
with rate q = per_round / num, the usual approximation for DP-FedAvg (McMahan et al. 2018).
Epsilon is a function of the rounds done only, so a resumed run reports the same values.
"""

from __future__ import annotations

from functools import lru_cache

# Integer RDP orders: exact for the sampled Gaussian (fractional ones need a series that
# does not always converge) and fine enough for the epsilons of interest.
ORDERS: tuple[int, ...] = (*range(2, 65), 80, 96, 128, 160, 192, 256, 384, 512, 1024)


@lru_cache(maxsize=1024)
def epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """Epsilon after ``rounds`` rounds of the sampled Gaussian mechanism, at ``delta``."""
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
