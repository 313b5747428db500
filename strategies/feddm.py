"""FedDM server half: FedAvg's sampling and messages; instead of averaging models, the global
model is trained on the union of the clients' synthetic sets (``fedsim_methods.feddm``).

Replies arrive sorted by partition id, so the union, and the seeded shuffles over it, are
the same on every backend; the server's epochs continue from the weights it sent. A reply
whose synthetic set is not images of the dataset's shape with labels among its classes, or
holds a non-finite value, is refused before it is used (``validate_reply``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedsim.config.schema import ClientConfig, Experiment
from fedsim.config.wire import experiment_of
from fedsim.federation.replies import same_arrays_as_sent
from fedsim.federation.sampling import sampling_kwargs
from fedsim.federation.strategy import RemembersSent
from fedsim.seeding import torch_generator
from fedsim.training import train_epochs
from fedsim_methods.feddm import IMAGES, LABELS, SERVER_TRAIN, SYNTHETIC, feddm_of

log = logging.getLogger("fedsim")


def _image_data(exp: Experiment):
    from fedsim.data.federated import federated_image_data

    return federated_image_data(exp.data, exp.clients.num, exp.run.seed)


class FedDM(RemembersSent, FedAvg):
    def __init__(self, exp: Experiment, **kwargs) -> None:
        super().__init__(**kwargs)
        self.exp = exp
        self.cfg = feddm_of(exp)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = [m for m in replies if not m.has_error()]
        if not valid or self.sent is None:
            return None, None
        images = torch.cat([torch.from_numpy(m.content[SYNTHETIC][IMAGES].numpy()) for m in valid])
        labels = torch.cat([torch.from_numpy(m.content[SYNTHETIC][LABELS].numpy()) for m in valid])
        model = self._model()
        model.load_state_dict(self.sent.to_torch_state_dict())
        cfg = self.cfg
        schedule = ClientConfig(
            local_epochs=cfg.server_epochs,
            batch_size=cfg.server_batch,
            optimizer="sgd",
            lr=cfg.server_lr,
            momentum=cfg.server_momentum,
        )
        gen = torch_generator(self.exp.run.seed, server_round, SERVER_TRAIN)
        loss = train_epochs(model, images, labels, schedule, gen, torch.device("cpu"))
        log.info(
            "round %d: trained on %d synthetic images (loss %.4f)", server_round, len(labels), loss
        )
        contents = [m.content for m in valid]
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        metrics["server_train_loss"] = loss
        metrics["synthetic_images"] = len(labels)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return ArrayRecord(state), metrics

    def state_dict(self) -> RecordDict:
        """Nothing: the server keeps no state between rounds (the global model is the run's)."""
        return RecordDict()

    def load_state_dict(self, state: RecordDict) -> None:
        pass

    def _model(self) -> torch.nn.Module:
        from fedsim.models import build_model

        data, exp = _image_data(self.exp), self.exp
        return build_model(exp.model, data.input_shape, data.num_classes, exp.run.seed)


def build_strategy(exp: Experiment) -> FedDM:
    return FedDM(exp, **sampling_kwargs(exp))


def validate_reply(stage: str, sent: Message, reply: Message) -> str | None:
    """A training reply holds images of the dataset's shape and labels among its classes;
    other replies (client evaluation) are checked as every method's are."""
    content = reply.content
    if not stage.startswith("train"):
        return same_arrays_as_sent(stage, sent, reply)
    if SYNTHETIC not in content.array_records:
        return f"reply has no '{SYNTHETIC}' arrays"
    record = content.array_records[SYNTHETIC]
    if set(record.keys()) != {IMAGES, LABELS}:
        return f"'{SYNTHETIC}' holds {sorted(record.keys())}, not ['{IMAGES}', '{LABELS}']"
    images, labels = record[IMAGES].numpy(), record[LABELS].numpy()
    exp = experiment_of(sent)
    data = _image_data(exp)
    if images.dtype != np.float32 or tuple(images.shape[1:]) != tuple(data.input_shape):
        return (
            f"synthetic images are {images.dtype} {tuple(images.shape)}, expected float32 "
            f"(N, {', '.join(map(str, data.input_shape))})"
        )
    if labels.dtype != np.int64 or labels.shape != (len(images),):
        return (
            f"synthetic labels are {labels.dtype} {labels.shape}, expected int64 ({len(images)},)"
        )
    most = feddm_of(exp).ipc * data.num_classes
    if len(labels) > most:
        return f"{len(labels)} synthetic images, more than ipc x classes = {most}"
    if len(labels) and (labels.min() < 0 or labels.max() >= data.num_classes):
        return f"synthetic labels outside 0..{data.num_classes - 1}"
    if not np.isfinite(images).all():
        return "synthetic images hold NaN or inf"
    return None
