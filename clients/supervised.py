"""Supervised classification client (images, or texts as token ids): local SGD on the
client's partition.

Used by the baselines (FedAvg, FedProx, FedAdam, FedYogi, FedAvgM) and the curriculum
method. FedProx's proximal term is applied when the server's config carries ``proximal-mu``.
A ``[curriculum]`` section (``fedsim/curriculum``) paces local training and answers the
client curriculum's scoring messages. Only what runs on a SuperNode lives here; the initial
model and the server-side evaluation are in ``strategies/supervised.py``.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedsim.config.schema import Experiment
from fedsim.local import local
from fedsim.seeding import LOCAL_SHUFFLE, torch_generator
from fedsim.training import evaluate as evaluate_model
from fedsim.training import train_epochs
from fedsim_methods.curriculum.local import after_training, curriculum_batches
from fedsim_methods.curriculum.schedule import SCORE_METRIC


def train(msg: Message, context: Context, exp: Experiment) -> Message:
    server_round = int(msg.content["config"]["server-round"])
    at = local(msg, context, exp)
    pid, device, x, y, model = at.pid, at.device, at.x, at.y, at.model
    mu = float(msg.content["config"].get("proximal-mu", 0.0))
    generator = torch_generator(exp.run.seed, server_round, pid, LOCAL_SHUFFLE)
    paced = curriculum_batches(exp, model, x, y, context, server_round, pid, generator, device)
    loss = train_epochs(model, x, y, exp.client, generator, device, mu, index_batches=paced)
    after_training(exp.curriculum, model, context)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    content = RecordDict(
        {
            "arrays": ArrayRecord(state),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": len(y)}),
        }
    )
    return Message(content, reply_to=msg)


def _evaluate_global(msg: Message, context: Context, exp: Experiment) -> tuple[dict, int]:
    """The global model from ``msg`` evaluated on this client's partition: (metrics, size)."""
    at = local(msg, context, exp)
    return evaluate_model(at.model, at.x, at.y, exp.eval.batch_size, at.device), len(at.y)


def evaluate(msg: Message, context: Context, exp: Experiment) -> Message:
    """Client-side evaluation of the global model on the client's own partition."""
    result, n = _evaluate_global(msg, context, exp)
    metrics = {"eval_loss": result["loss"], "eval_accuracy": result["accuracy"]}
    content = RecordDict({"metrics": MetricRecord({**metrics, "num-examples": n})})
    return Message(content, reply_to=msg)


def curriculum_score(msg: Message, context: Context, exp: Experiment) -> Message:
    """The client curriculum's scoring exchange: the global model's mean loss on this
    client's data. Answering reveals that one statistic to the server (see
    strategies/curriculum.py)."""
    result, n = _evaluate_global(msg, context, exp)
    reply = MetricRecord({SCORE_METRIC: result["loss"], "num-examples": n})
    return Message(RecordDict({"metrics": reply}), reply_to=msg)
