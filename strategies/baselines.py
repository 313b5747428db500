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
MODELS_FOR_TASK = {
    "image-classification": SUPPORTED_MODELS,
    "text-classification": ("bag_of_embeddings",),
}


def validate(exp: Experiment) -> None:
    """Rules the schema alone cannot know: which small models fit which data."""
    from fedsim.data.registry import task_of

    task = task_of(exp.data.dataset)
    supported = MODELS_FOR_TASK.get(task, SUPPORTED_MODELS)
    if exp.model.name not in supported:
        raise ValueError(
            f"model.name: '{exp.model.name}' is not one of {', '.join(supported)} "
            f"(the models for {task} data such as '{exp.data.dataset}')"
        )
    if task == "text-classification" and exp.data.partitioner == "disparity":
        raise ValueError("data.partitioner: disparity scores images only (its scorer is a CNN)")
    if exp.model.init != "random" and exp.model.name != "bag_of_embeddings":
        raise ValueError(f"model.init: '{exp.model.init}' is for bag_of_embeddings only")


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
