"""Server-side generative dataset distillation (Jia et al., arXiv 2312.01537) as a strategy.

Each round: FedAvg's sampling sends the global surrogate; clients train it locally and send
their weights back (traffic = FedAvg's). Then, instead of averaging, the server:

1. for each reply, in partition order, synthesises ``ipc`` images for each class the client
   holds by trajectory matching from the global weights sent to the client's weights
   (``fedsim_methods.distillation.synthesis``), through the configured generator;
2. trains the global surrogate on the union of the synthetic sets (continuing from the
   weights it sent; no weight averaging at all);
3. trains the larger server-only model (ResNet-18-style) on the same union and evaluates it;
   it is never broadcast.

Replies are keyed by partition id, so partial participation and failed clients work (the
reference indexes clients by position and breaks). Every random stream is seeded by (seed,
round, partition id), so a run resumed from a checkpoint repeats the uninterrupted one byte
for byte; the server model's weights are this strategy's checkpointed state.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedsim.config.schema import Experiment, ModelConfig
from fedsim.federation.callbacks import Callback, RunState
from fedsim.federation.sampling import sampling_kwargs
from fedsim.federation.strategy import RemembersSent, UsesFederation
from fedsim.seeding import derive_seed, torch_generator
from fedsim.threads import torch_threads
from fedsim_methods.distillation import (
    CLASS_COUNTS,
    GLOBAL_TRAIN,
    SERVER_INIT,
    SERVER_TRAIN,
    SYNTHESIS,
    distillation_of,
)
from fedsim_methods.distillation.config import DistillationConfig

log = logging.getLogger("fedsim")


@dataclass
class ClientSynthesis:
    partition_id: int
    images: torch.Tensor
    labels: torch.Tensor
    loss_first: float
    loss_last: float
    syn_lr: float
    seconds: float


@dataclass
class RoundOutcome:
    """What the last aggregation produced, for the method's callback to save and report."""

    server_round: int
    clients: list[ClientSynthesis] = field(default_factory=list)
    server_model: dict[str, float] = field(default_factory=dict)


class Distillation(RemembersSent, UsesFederation, FedAvg):
    def __init__(self, exp: Experiment, **kwargs) -> None:
        super().__init__(**kwargs)
        self.exp = exp
        self.cfg = distillation_of(exp)
        self._server_model: torch.nn.Module | None = None
        self._server_state: dict[str, torch.Tensor] | None = None
        self._generator: torch.nn.Module | None = None
        self.last: RoundOutcome | None = None

    # -- lazily built server-side pieces --------------------------------------------------
    @property
    def data(self):
        from fedsim.data.federated import federated_image_data

        exp = self.exp
        return federated_image_data(exp.data, exp.clients.num, exp.run.seed)

    def surrogate(self) -> torch.nn.Module:
        from fedsim.models import build_model

        data = self.data
        return build_model(self.exp.model, data.input_shape, data.num_classes, self.exp.run.seed)

    def generator(self) -> torch.nn.Module:
        if self._generator is None:
            self._generator = load_generator(self.exp, self.cfg).to(self.device)
        return self._generator

    @property
    def device(self) -> torch.device:
        return torch.device(self.cfg.server_device)

    def server_model(self) -> torch.nn.Module | None:
        if self.cfg.server_model == "none":
            return None
        if self._server_model is None:
            from fedsim.models import build_model

            data = self.data
            spec = ModelConfig(name=self.cfg.server_model, width=self.cfg.server_model_width)
            seed = derive_seed(self.exp.run.seed, SERVER_INIT)
            self._server_model = build_model(spec, data.input_shape, data.num_classes, seed)
            if self._server_state is not None:
                self._server_model.load_state_dict(self._server_state)
            self._server_model.to(self.device)
        return self._server_model

    # -- Flower's Strategy API ------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = [m for m in replies if not m.has_error()]
        if not valid or self.sent is None:
            self.last = RoundOutcome(server_round)
            return None, None
        with torch_threads(self.cfg.server_threads):
            return self._distil(server_round, valid)

    def _distil(self, server_round: int, replies: list[Message]):
        from fedsim_methods.distillation.parallel import SynthesisJob, synthesise_all
        from fedsim_methods.distillation.server_training import train_on_synthetic

        cfg, seed = self.cfg, self.exp.run.seed
        model = self.surrogate().to(self.device)
        names = [n for n, _ in model.named_parameters()]
        sent = self.sent.to_torch_state_dict()
        outcome = RoundOutcome(server_round)
        jobs: list[SynthesisJob] = []
        for reply in replies:
            pid = self.ctx.partition_of(reply.metadata.src_node_id)
            counts = list(reply.content["metrics"].get(CLASS_COUNTS, []))
            classes = [c for c, n in enumerate(counts) if n > 0]
            if not classes:
                continue
            got = reply.content["arrays"].to_torch_state_dict()
            jobs.append(
                SynthesisJob(
                    pid,
                    [sent[n] for n in names],
                    [got[n] for n in names],
                    torch.tensor(classes).repeat_interleave(cfg.ipc),
                    (seed, server_round, pid, SYNTHESIS),
                )
            )
        for job, result, seconds in synthesise_all(model, self.generator(), cfg, jobs):
            log.info(
                "round %d: synthesised %d images for client %d in %.1fs (matching loss "
                "%.4f -> %.4f)",
                server_round,
                len(job.labels),
                job.partition_id,
                seconds,
                result.losses[0],
                result.losses[-1],
            )
            outcome.clients.append(
                ClientSynthesis(
                    job.partition_id,
                    result.images,
                    result.labels,
                    result.losses[0],
                    result.losses[-1],
                    result.syn_lr,
                    seconds,
                )
            )
        if not outcome.clients:
            self.last = outcome
            return None, None
        images = torch.cat([c.images for c in outcome.clients]).to(self.device)
        labels = torch.cat([c.labels for c in outcome.clients]).to(self.device)
        ops = cfg.augmentations()
        model.load_state_dict(sent)
        global_loss = train_on_synthetic(
            model,
            images,
            labels,
            epochs=cfg.global_epochs,
            lr=cfg.global_lr,
            batch_size=cfg.train_batch,
            ops=ops,
            gen=torch_generator(seed, server_round, GLOBAL_TRAIN),
        )
        server = self.server_model()
        if server is not None:
            train_on_synthetic(
                server,
                images,
                labels,
                epochs=cfg.server_epochs,
                lr=cfg.server_lr,
                batch_size=cfg.train_batch,
                ops=ops,
                gen=torch_generator(seed, server_round, SERVER_TRAIN),
                momentum=0.9,
                weight_decay=5e-4,
            )
            outcome.server_model = self._evaluate_server_model(server)
        self.last = outcome
        n = len(outcome.clients)
        examples = [int(r.content["metrics"].get("num-examples", 0)) for r in replies]
        losses = [float(r.content["metrics"].get("train_loss", 0.0)) for r in replies]
        metrics = MetricRecord(
            {
                "train_loss": sum(e * v for e, v in zip(examples, losses)) / max(sum(examples), 1),
                "synthetic_images": len(labels),
                "matching_loss_first": sum(c.loss_first for c in outcome.clients) / n,
                "matching_loss_last": sum(c.loss_last for c in outcome.clients) / n,
                "syn_lr": sum(c.syn_lr for c in outcome.clients) / n,
                "global_synthetic_loss": global_loss,
            }
        )
        return ArrayRecord({k: v.cpu() for k, v in model.state_dict().items()}), metrics

    def _evaluate_server_model(self, server: torch.nn.Module) -> dict[str, float]:
        from fedsim.data.federated import server_test_set
        from fedsim.training import evaluate

        exp = self.exp
        x, y = server_test_set(self.data, exp.eval.max_samples, exp.run.seed)
        return evaluate(server, x, y, exp.eval.batch_size, self.device)

    # -- checkpointed state: the server-only model ----------------------------------------
    def state_dict(self) -> RecordDict:
        state = RecordDict()
        if self._server_model is not None:
            weights = {k: v.cpu() for k, v in self._server_model.state_dict().items()}
            state["server_model"] = ArrayRecord(weights)
        return state

    def load_state_dict(self, state: RecordDict) -> None:
        record = state.get("server_model")
        self._server_state = record.to_torch_state_dict() if record is not None else None
        self._server_model = None


def load_generator(exp: Experiment, cfg: DistillationConfig) -> torch.nn.Module:
    from fedsim.data.federated import federated_image_data
    from fedsim_methods.distillation.generators import PixelSpace, custom_generator
    from fedsim_methods.distillation.pretrain import pretrained_generator

    data = federated_image_data(exp.data, exp.clients.num, exp.run.seed)
    if cfg.generator == "pixel":
        return PixelSpace(data.input_shape)
    if cfg.generator == "pretrained":
        return pretrained_generator(exp, cfg)[0]
    return custom_generator(
        cfg.generator_module, cfg.generator_checkpoint, data.num_classes, data.input_shape
    )


class SaveSynthetic(Callback):
    """Per round: the synthetic sets (``synthetic/round-NNNNNN.pt``), an image grid
    (``plots/synthetic-round-NNNNNN.png``), synthesis cost (``synthesis.csv``), and the
    server-only model's test metrics as the ``server-model`` scope of ``metrics.jsonl``."""

    def __init__(self, exp: Experiment, run_dir: Path) -> None:
        self.cfg = distillation_of(exp)
        self.run_dir = Path(run_dir)

    def on_start(self, run: RunState) -> None:
        (self.run_dir / "synthesis.csv").unlink(missing_ok=True)

    def on_resume(self, run: RunState, from_round: int) -> None:
        """Drop rows of rounds after the checkpoint (they are about to run again)."""
        path = self.run_dir / "synthesis.csv"
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = lines[:1] + [ln for ln in lines[1:] if int(ln.split(",")[0]) <= from_round]
            path.write_text("".join(kept), encoding="utf-8")

    def on_round_end(self, run: RunState, server_round: int, metrics) -> dict | None:
        outcome = getattr(run.strategy, "last", None)
        if server_round == 0 or outcome is None or outcome.server_round != server_round:
            return None
        self._cost(outcome)
        if self.cfg.save_images and outcome.clients:
            self._save(outcome, run)
        return {"server-model": outcome.server_model} if outcome.server_model else None

    def _cost(self, outcome: RoundOutcome) -> None:
        path = self.run_dir / "synthesis.csv"
        fresh = not path.exists()
        with open(path, "a", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            if fresh:
                out.writerow(
                    ["round", "partition", "images", "loss_first", "loss_last", "syn_lr", "seconds"]
                )
            for c in outcome.clients:
                out.writerow(
                    [
                        outcome.server_round,
                        c.partition_id,
                        len(c.labels),
                        f"{c.loss_first:.6g}",
                        f"{c.loss_last:.6g}",
                        f"{c.syn_lr:.6g}",
                        f"{c.seconds:.3f}",
                    ]
                )

    def _save(self, outcome: RoundOutcome, run: RunState) -> None:
        from fedsim_methods.distillation.images import save_grid

        folder = self.run_dir / "synthetic"
        folder.mkdir(exist_ok=True)
        images = torch.cat([c.images for c in outcome.clients])
        labels = torch.cat([c.labels for c in outcome.clients])
        owners = torch.cat([torch.full((len(c.labels),), c.partition_id) for c in outcome.clients])
        name = f"round-{outcome.server_round:06d}"
        torch.save(
            {"images": images, "labels": labels, "partition_ids": owners},
            folder / f"{name}.pt",
        )
        classes = getattr(getattr(run.strategy, "data", None), "classes", None)
        save_grid(images, labels, self.run_dir / "plots" / f"synthetic-{name}.png", classes)


def build_strategy(exp: Experiment) -> Distillation:
    return Distillation(exp, **sampling_kwargs(exp))


def callbacks(exp: Experiment, run_dir: Path) -> list[Callback]:
    return [SaveSynthetic(exp, run_dir)]


def preflight(exp: Experiment) -> None:
    """Server side, before round 1: a custom generator must load and meet the contract; the
    pretrained one needs data only the server holds. It is not trained here: loading a
    config (a sweep's dry run, ``fedsim distill-generator`` itself) must stay cheap, so a
    run trains it on first use and ``fedsim distill-generator`` ahead of time."""
    from fedsim_methods.distillation.pretrain import NO_SERVER_DATA

    cfg = distillation_of(exp)
    if cfg.server_device == "cuda" and not torch.cuda.is_available():
        raise ValueError("distillation.server_device: 'cuda' but this server has no CUDA GPU")
    if cfg.generator == "pretrained":
        if exp.data.server_share <= 0:
            raise ValueError(NO_SERVER_DATA)
        return
    load_generator(exp, cfg)
