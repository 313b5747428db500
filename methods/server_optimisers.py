"""Flower's server optimisers as fedsim configures them: each one's section of knobs
(``[fedprox]``, ``[fedopt]``, ``[fedavgm]``) and the rules for composing one with a method.

Shared by the methods that pick an optimiser: the baselines (the optimiser is the method),
the curriculum and FedIT (``strategy.name``). The server half that builds them is
``fedsim_methods.strategies.flower``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from fedsim.config.schema import Section

if TYPE_CHECKING:
    from fedsim.config.schema import Experiment


class FedProxConfig(Section):
    """``[fedprox]``: the proximal term (mu/2)||w - w_global||^2 on every local step."""

    proximal_mu: float = Field(0.01, ge=0, description="mu of FedProx (Li et al. 2020)")


class FedOptConfig(Section):
    """``[fedopt]``: the server's adaptive optimiser (Reddi et al. 2021), Flower's FedOpt."""

    eta: float = Field(1e-2, gt=0, description="server learning rate")
    eta_l: float = Field(1e-1, gt=0, description="client learning rate reported to FedOpt")
    beta_1: float = Field(0.9, ge=0, lt=1)
    beta_2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0, description="adaptivity: added to the second moment's root")


class FedAvgMConfig(Section):
    """``[fedavgm]``: server momentum (Hsu et al. 2019), Flower's FedAvgM."""

    server_learning_rate: float = Field(1.0, gt=0, description="step on the averaged update")
    server_momentum: float = Field(0.9, ge=0, lt=1, description="momentum of that step")


# Flower's server optimisers by name -> the section that configures each (None: no knobs).
OPTIMISER_SECTIONS: dict[str, tuple[str, type[Section]] | None] = {
    "fedavg": None,
    "fedprox": ("fedprox", FedProxConfig),
    "fedadam": ("fedopt", FedOptConfig),
    "fedyogi": ("fedopt", FedOptConfig),
    "fedavgm": ("fedavgm", FedAvgMConfig),
}
# Whose aggregate is the weighted mean of the clients' models, with no server state that
# sees it: what central DP's noise (added after aggregate_train) is calibrated to.
MEAN_OPTIMISERS = ("fedavg", "fedprox")


def optimiser_sections() -> dict[str, type[Section]]:
    """Every optimiser section, for a method that composes with any of them."""
    return {
        name: model for entry in OPTIMISER_SECTIONS.values() if entry for name, model in [entry]
    }


def check_optimiser_sections(exp: Experiment, optimiser: str) -> None:
    """An optimiser section that ``optimiser`` does not read is refused, naming it."""
    mine = OPTIMISER_SECTIONS.get(optimiser)
    for name in optimiser_sections():
        if exp.section(name) is not None and (mine is None or mine[0] != name):
            raise ValueError(
                f"{name}: [{name}] configures {' or '.join(_readers(name))}, not '{optimiser}' "
                "(remove the section or change the optimiser)"
            )


def _readers(section: str) -> list[str]:
    return [n for n, entry in OPTIMISER_SECTIONS.items() if entry and entry[0] == section]


def check_server_options(exp: Experiment, optimiser: str) -> None:
    """``[privacy]`` with Flower's strategy ``optimiser``: only where the noise covers all it
    sends; and the client curriculum's scoring round is not covered by the accountant."""
    if exp.privacy is None or exp.privacy.mode == "none":
        return
    if optimiser not in MEAN_OPTIMISERS:
        raise ValueError(
            f"privacy.mode: '{optimiser}' steps a server optimiser on the mean, and Flower's "
            "DP wrappers add their noise after that step, so its state would see un-noised "
            f"updates; use privacy with {' or '.join(MEAN_OPTIMISERS)}"
        )
    cfg = exp.section("curriculum")
    if cfg and cfg.client_curriculum:
        raise ValueError(
            "privacy.mode: the client curriculum's scoring round sends every client's loss to "
            "the server without noise, which the accountant does not cover; set "
            "curriculum.client_curriculum = false"
        )
