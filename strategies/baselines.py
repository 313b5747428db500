"""FedAvg, FedProx, FedAdam and FedYogi: Flower's own strategies, configured from the experiment.

We do not re-implement them. Sampling is made reproducible by the federation loop
(seeded ``random`` around ``configure_*``, nodes listed in partition order), so the
strategies are used exactly as Flower ships them.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, FedYogi, Strategy

from fedsim.config.schema import Experiment


def sampling_kwargs(exp: Experiment) -> dict:
    """Flower's fraction/minimum arguments that pick exactly ``per_round`` clients."""
    num, per_round = exp.clients.num, exp.clients.per_round
    n_eval = round(exp.strategy.fraction_evaluate * num)
    return {
        "fraction_train": per_round / num,
        "min_train_nodes": per_round,
        "fraction_evaluate": exp.strategy.fraction_evaluate,
        "min_evaluate_nodes": n_eval,
        "min_available_nodes": num,
    }


SUPPORTED_MODELS = ("cnn", "mlp")


def validate(exp: Experiment) -> None:
    """Rules the schema alone cannot know: the baselines train the small image models."""
    if exp.model.name not in SUPPORTED_MODELS:
        raise ValueError(
            f"model.name: '{exp.model.name}' is not one of {', '.join(SUPPORTED_MODELS)}"
        )


def build_strategy(exp: Experiment) -> Strategy:
    """Flower's strategy, wrapped in the client curriculum when ``[curriculum]`` asks for it."""
    from strategies.curriculum import with_client_curriculum

    return with_client_curriculum(flower_strategy(exp), exp)


def flower_strategy(exp: Experiment) -> Strategy:
    s, kw = exp.strategy, sampling_kwargs(exp)
    if s.name == "fedprox":
        return FedProx(proximal_mu=s.proximal_mu, **kw)
    if s.name in ("fedadam", "fedyogi"):
        cls = FedAdam if s.name == "fedadam" else FedYogi
        return cls(eta=s.eta, eta_l=s.eta_l, beta_1=s.beta_1, beta_2=s.beta_2, tau=s.tau, **kw)
    return FedAvg(**kw)
