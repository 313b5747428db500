"""SFPrompt (Cao, Zhu, Gong, arXiv 2407.17533): split federated prompt tuning, server side.

A pretrained encoder (``sfprompt.model``, a BERT-like model asset) is split in three
(``fedsim_methods.sfprompt``): the sampled clients hold the head (embeddings, soft prompts,
first ``head_layers`` blocks) and the tail (last ``tail_layers`` blocks, classifier); the
server holds the frozen body. Each round, per sampled client
(``fedsim_methods.sfprompt.protocol`` lists the messages and what each carries):

1. ``train.prune``: the global prompts + tail go down; the client keeps its hardest
   ``gamma`` samples by EL2N and runs the local-loss update on head -> tail.
2. split training, one chunk of micro-batches at a time, all clients in lockstep: head
   activations up, body forward, body outputs down, tail gradients up, body backward,
   head gradients down; one client optimiser step per chunk.
3. ``train``: prompts + tail up; FedAvg weighted by the samples each client trained on.

``comm.csv`` counts every exchange under its stage (``train.split-activations`` ...), so
activations, gradients and the model are accounted for exactly. Baselines by switches:
``prompts``/``prune``/``local_loss`` all false is SplitFed with a frozen body.

The server computes the body for every active client's chunk before the next exchange,
keeping one chunk's autograd graph per client between the body forward and backward.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedsim.config.schema import Experiment
from fedsim.config.systems import sample_size
from fedsim.federation.context import FederationContext
from fedsim.federation.strategy import UsesFederation
from fedsim.systems.clock import WORK_FLOPS
from fedsim_methods.sfprompt import protocol as p
from fedsim_methods.sfprompt.config import SFPromptConfig
from fedsim_methods.sfprompt.parts import CENTRE
from fedsim_methods.sfprompt.plan import Chunk, chunks
from fedsim_methods.sfprompt.wire import record_of, tensors_of


class SFPrompt(UsesFederation, FedAvg):
    """FedAvg of prompts + tails; the round's training stage is ``train_round``."""

    def __init__(self, exp: Experiment, **kwargs) -> None:
        super().__init__(**kwargs)
        self.exp = exp
        self.cfg: SFPromptConfig = exp.section("sfprompt")
        self._body = None
        self.copies = None  # train_body: this round's per-client copies of the body

    # -- the server's part of the model ---------------------------------------------------
    @property
    def body(self):
        """The frozen body, loaded on first use."""
        if self._body is None:
            from fedsim_methods.sfprompt.backbone import load_backbone

            backbone = load_backbone(self.cfg.model, str(self.device))
            self._body = self.cfg.body(backbone)
        return self._body

    @property
    def device(self) -> torch.device:
        from fedsim.training import pick_device

        return pick_device(self.exp.clients.num_gpus)

    # -- checkpoints: the server keeps nothing between rounds (the body is frozen) --------
    def state_dict(self) -> RecordDict:
        return RecordDict()

    def load_state_dict(self, state: RecordDict) -> None:
        pass

    def plan(self, kept: int) -> list[Chunk]:
        return chunks(kept, self.exp.client.batch_size, self.cfg.split_epochs, self.cfg.chunk_size)

    # -- one round ------------------------------------------------------------------------
    def train_round(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, ctx: FederationContext
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        from fedsim_methods.sfprompt.server_body import BodyCopies, cut, joined

        base = {**dict(config), "server-round": server_round}
        sampled = sorted(ctx.random.sample(ctx.partition_ids, sample_size(self.exp)))
        if not self.cfg.split:
            return self.unsplit_round(server_round, arrays, base, sampled, ctx)
        arrays, body = cut(arrays)  # the body's weights (train_body) never leave the server
        content = RecordDict({p.ARRAYS: arrays, "config": ConfigRecord(base)})
        replies = ctx.exchange(
            [ctx.message(content, pid, p.PRUNE) for pid in sampled], stage=p.STAGE_PRUNE
        )
        plans, samples = {}, {}
        for reply in (r for r in replies if not r.has_error()):
            pid, metrics = ctx.partition_of(reply.metadata.src_node_id), reply.content["metrics"]
            plans[pid] = self.plan(int(metrics[p.NUM_KEPT]))
            samples[pid] = int(metrics[p.NUM_SAMPLES])
        self.copies = BodyCopies(self.body, body, sorted(plans), self.exp.client) if body else None
        step = 0
        while active := sorted(pid for pid, plan in plans.items() if step < len(plan)):
            failed = self.split_step(ctx, base, {pid: plans[pid][step] for pid in active})
            for pid in failed:
                del plans[pid]
            step += 1
        final = RecordDict({"config": ConfigRecord({**base, p.EXPECT: _shapes(arrays)})})
        replies = ctx.exchange(
            [ctx.message(final, pid, p.COLLECT) for pid in sorted(plans)], stage=p.STAGE_COLLECT
        )
        new_arrays, metrics = self.aggregate_train(server_round, replies)
        if metrics is not None:
            metrics.pop(WORK_FLOPS, None)  # for the virtual clock; client-flops reports it
            metrics.update(self.accounting(ctx, arrays, replies, samples))
            metrics.update(_bias(new_arrays))
            metrics["server-trainable-params"] = sum(t.numel() for t in body.values())
        if self.copies is not None:
            copies, self.copies = self.copies, None
            if new_arrays is not None:
                weights = {
                    ctx.partition_of(r.metadata.src_node_id): float(
                        r.content["metrics"]["num-examples"]
                    )
                    for r in replies
                    if not r.has_error()
                }
                new_arrays = joined(new_arrays, copies.average(weights))
        return new_arrays, metrics

    def unsplit_round(
        self,
        server_round: int,
        arrays: ArrayRecord,
        base: dict,
        sampled: list[int],
        ctx: FederationContext,
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The unsplit baselines (``sfprompt.mode``): one ``train`` exchange, local training
        of the whole encoder on the client, FedAvg, the same accounting."""
        config = ConfigRecord({**base, p.EXPECT: _shapes(arrays)})
        content = RecordDict({p.ARRAYS: arrays, "config": config})
        replies = ctx.exchange(
            [ctx.message(content, pid, p.COLLECT) for pid in sampled], stage=p.STAGE_COLLECT
        )
        samples = {
            ctx.partition_of(r.metadata.src_node_id): int(r.content["metrics"][p.NUM_SAMPLES])
            for r in replies
            if not r.has_error()
        }
        new_arrays, metrics = self.aggregate_train(server_round, replies)
        if metrics is not None:
            metrics.pop(WORK_FLOPS, None)  # for the virtual clock; client-flops reports it
            metrics.update(self.accounting(ctx, arrays, replies, samples))
            metrics.update(_bias(new_arrays))
        return new_arrays, metrics

    def accounting(
        self,
        ctx: FederationContext,
        arrays: ArrayRecord,
        replies: list[Message],
        samples: dict[int, int],
    ) -> dict[str, float]:
        """Per client (mean over the clients that finished the round): FLOPs it computed,
        FLOPs a round of federated full fine-tuning would have cost it (client.local_epochs
        epochs over all its samples), and trainable parameters of both
        (``fedsim_methods.sfprompt.accounting``)."""
        from fedsim_methods.sfprompt.accounting import full_finetune_flops, full_model_params
        from fedsim_methods.sfprompt.backbone import load_backbone

        done = [r for r in replies if not r.has_error()]
        if not done:
            return {}
        backbone = load_backbone(self.cfg.model, "cpu")
        classes = _num_classes(self.exp)
        full = []
        for reply in done:
            n = samples[ctx.partition_of(reply.metadata.src_node_id)]
            epochs = self.exp.client.local_epochs
            full.append(full_finetune_flops(backbone, classes, self.exp.data.max_length, n, epochs))
        client = [float(r.content["metrics"][p.CLIENT_FLOPS]) for r in done]
        mean_client, mean_full = sum(client) / len(done), sum(full) / len(done)
        return {
            p.CLIENT_FLOPS: mean_client,
            "full-ft-flops": mean_full,
            "flops-ratio": mean_client / mean_full,
            "trainable-params": sum(
                int(np.prod(a.shape)) for k, a in arrays.items() if k != CENTRE
            ),  # the feature centre travels but is not trained
            "full-ft-params": full_model_params(backbone, classes),
        }

    def split_step(self, ctx: FederationContext, base: dict, todo: dict[int, Chunk]) -> set[int]:
        """One chunk for each client in ``todo``: the three split exchanges. Returns the
        clients that failed (they take no further part in the round)."""
        from fedsim.threads import torch_threads

        tokens = self.cfg.prompt_count + self.exp.data.max_length
        hidden = int(self.body.config.hidden_size)

        def message(pid: int, kind: str, split: ArrayRecord | None = None) -> Message:
            chunk = todo[pid]
            config = {**base, p.CHUNK: chunk.index, p.SIZES: list(chunk.sizes)}
            config.update({p.TOKENS: tokens, p.HIDDEN: hidden})
            content = RecordDict({"config": ConfigRecord(config)})
            if split is not None:
                content[p.SPLIT] = split
            return ctx.message(content, pid, kind)

        failed: set[int] = set()

        def answered(replies: list[Message]) -> dict[int, Message]:
            ok = {}
            for reply in replies:
                pid = ctx.partition_of(reply.metadata.src_node_id)
                if reply.has_error():
                    failed.add(pid)
                else:
                    ok[pid] = reply
            failed.update(set(todo) - set(ok) - failed)
            return ok

        acts = answered(
            ctx.exchange([message(pid, p.FORWARD) for pid in todo], stage=p.STAGE_ACTIVATIONS)
        )
        trains_head = self.cfg.head_trains
        graphs: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        with torch_threads(self.exp.clients.num_cpus):
            for pid, reply in acts.items():
                split = tensors_of(reply.content[p.SPLIT])
                graphs[pid] = self.body_forward(
                    pid, split[p.ACTIVATIONS], split[p.MASK], todo[pid], trains_head
                )
        outs = {
            pid: record_of({p.BODY_OUT: torch.cat([out.detach() for _, out in graph])})
            for pid, graph in graphs.items()
        }
        tails = answered(
            ctx.exchange(
                [message(pid, p.TAIL, outs[pid]) for pid in sorted(graphs)],
                stage=p.STAGE_TAIL,
            )
        )
        outs.clear()
        head_grads: dict[int, ArrayRecord | None] = {}
        with torch_threads(self.exp.clients.num_cpus):
            for pid, reply in tails.items():
                graph = graphs.pop(pid)
                head_grads[pid] = None  # nothing on the client's side of the body trains
                if not trains_head and self.copies is None:
                    continue
                grad = tensors_of(reply.content[p.SPLIT])[p.BODY_GRAD]
                head_grad = self.body_backward(graph, grad, todo[pid])
                if self.copies is not None:
                    self.copies.step(pid)  # the chunk's step of this client's body
                if trains_head:
                    head_grads[pid] = record_of({p.HEAD_GRAD: head_grad})
        graphs.clear()
        answered(
            ctx.exchange(
                [message(pid, p.BACKWARD, head_grads[pid]) for pid in sorted(head_grads)],
                stage=p.STAGE_GRADIENTS,
            )
        )
        for pid in failed if self.copies is not None else ():
            self.copies.drop(pid)
        return failed

    def body_forward(
        self, pid: int, activations: torch.Tensor, mask: torch.Tensor, chunk: Chunk, head: bool
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(input, output) of the body per micro-batch; the graph is kept when the head
        (``head``) or the body itself trains. ``pid``'s own copy when the body trains."""
        body = self.copies[pid] if self.copies is not None else self.body
        graph = []
        with torch.set_grad_enabled(head or self.copies is not None):
            for part in chunk.micro_batches():
                x = activations[part].to(self.device).requires_grad_(head)
                graph.append((x, body(x, mask[part].to(self.device))))
        return graph

    def body_backward(
        self, graph: list[tuple[torch.Tensor, torch.Tensor]], grad: torch.Tensor, chunk: Chunk
    ) -> torch.Tensor | None:
        """d L_chunk / d head activations, micro-batch by micro-batch (None when the head
        does not train); a training body accumulates its own gradients on the way."""
        grads = []
        for (x, out), part in zip(graph, chunk.micro_batches(), strict=True):
            out.backward(grad[part].to(self.device))
            grads.append(x.grad)
        return torch.cat(grads) if grads and grads[0] is not None else None


# ------------------------------------------------------------------ server-side functions


def build_strategy(exp: Experiment) -> SFPrompt:
    from fedsim.federation.sampling import sampling_kwargs

    return SFPrompt(exp, **sampling_kwargs(exp))


def _bias(arrays: ArrayRecord | None) -> dict[str, float]:
    """The global classifier's bias per class after the round (label-skew diagnostics)."""
    if arrays is None or "tail.classifier.bias" not in arrays:
        return {}
    bias = arrays["tail.classifier.bias"].numpy()
    return {f"classifier-bias.{c}": float(v) for c, v in enumerate(bias)}


def _shapes(arrays: ArrayRecord) -> str:
    """The trainable arrays' shapes, sent with ``train`` so the reply can be checked."""
    return json.dumps({k: list(a.shape) for k, a in arrays.items()})


def _num_classes(exp: Experiment) -> int:
    from fedsim.data.federated import federated_image_data

    return federated_image_data(exp.data, exp.clients.num, exp.run.seed).num_classes


def _fresh_parts(exp: Experiment, device: torch.device):
    from fedsim_methods.sfprompt.backbone import load_backbone

    cfg = exp.section("sfprompt")
    return cfg.client_parts(load_backbone(cfg.model, str(device)), _num_classes(exp))


def initial_arrays(exp: Experiment) -> ArrayRecord:
    """Round-0 prompts (sampled vocabulary vectors), tail (pretrained blocks, random
    classifier), seeded by (seed, MODEL_INIT)."""
    from fedsim.seeding import MODEL_INIT, derive_seed
    from fedsim_methods.sfprompt.parts import initialise

    parts = _fresh_parts(exp, torch.device("cpu"))
    initialise(parts, derive_seed(exp.run.seed, MODEL_INIT))
    state = parts.state()
    cfg = exp.section("sfprompt")
    if cfg.train_body:  # SplitFed-V1: the server's part starts pretrained and trains too
        from fedsim_methods.sfprompt.backbone import load_backbone
        from fedsim_methods.sfprompt.server_body import body_state

        backbone = load_backbone(cfg.model, "cpu")
        state.update(body_state(cfg.body(backbone)))
    return record_of(state)


def server_evaluator(exp: Experiment):
    """The full model (head -> body -> tail with the global prompts + tail) on the test
    split, or ``eval.max_samples`` of it (the same seeded subset every round)."""

    from fedsim.data.federated import federated_image_data, server_test_set
    from fedsim.training import batches, pick_device
    from fedsim_methods.sfprompt.backbone import load_backbone

    data = federated_image_data(exp.data, exp.clients.num, exp.run.seed)
    x_test, y_test = server_test_set(data, exp.eval.max_samples, exp.run.seed)
    device = pick_device(exp.clients.num_gpus)
    cfg = exp.section("sfprompt")
    parts = _fresh_parts(exp, device)
    backbone = load_backbone(cfg.model, str(device))
    body = cfg.body(backbone)  # empty when unsplit
    if cfg.train_body:
        body = copy.deepcopy(body)  # the trained body is loaded into it every round
    pad_id = data.vocab.pad_id
    classes = data.num_classes

    @torch.no_grad()
    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        from fedsim_methods.sfprompt.server_body import cut, load_body

        client, body_weights = cut(arrays)
        parts.load(tensors_of(client))
        if cfg.train_body:
            load_body(body, body_weights)
        loss_sum, predicted = 0.0, []
        for idx in batches(len(y_test), exp.eval.batch_size, None):
            ids, labels = x_test[idx].to(device), y_test[idx].to(device)
            hidden, mask = parts.head(ids, ids != pad_id)
            logits = parts.tail(body(hidden, mask), mask)
            loss_sum += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            predicted.append(logits.argmax(1).cpu())
        n = max(len(y_test), 1)
        metrics = {
            "loss": loss_sum / n,
            **prediction_metrics(torch.cat(predicted), y_test, classes),
        }
        return MetricRecord(metrics)

    return evaluate_fn


def prediction_metrics(
    predicted: torch.Tensor, labels: torch.Tensor, classes: int
) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over the classes present) and each class's
    share of the predictions: a model that predicts one class scores 1/C balanced accuracy
    and a share of 1.0, whatever the test split's class mix (label-skew diagnostics)."""
    recalls = [
        float((predicted[labels == c] == c).double().mean())
        for c in range(classes)
        if (labels == c).any()
    ]
    out = {
        "accuracy": float((predicted == labels).double().mean()) if len(labels) else 0.0,
        "balanced-accuracy": sum(recalls) / len(recalls) if recalls else 0.0,
    }
    for c in range(classes):
        out[f"pred-share.{c}"] = float((predicted == c).double().mean())
    return out


# ------------------------------------------------------------------ checks


def _shape_problem(name: str, array, shape: tuple[int, ...], dtype: str) -> str | None:
    if tuple(array.shape) != shape or array.dtype != dtype:
        return f"array '{name}' is {array.dtype}{list(array.shape)}, expected {dtype}{list(shape)}"
    return None


def _exactly(record: ArrayRecord | None, expected: dict[str, tuple[tuple[int, ...], str]]):
    got = set(record.keys()) if record is not None else set()
    if got != set(expected):
        return f"arrays {sorted(got)}, expected {sorted(expected)}"
    for name, (shape, dtype) in expected.items():
        problem = _shape_problem(name, record[name], shape, dtype)
        if problem:
            return problem
    return None


def validate_reply(stage: str, sent: Message, reply: Message) -> str | None:
    """Each stage's reply carries exactly the arrays it should, in the shapes the plan
    implies (activations and gradients look nothing like what was sent)."""
    content, config = reply.content, sent.content["config"]
    if stage == p.STAGE_PRUNE:
        metrics = content.metric_records.get("metrics")
        if content.array_records:
            return "prune reply: carries arrays"
        kept = int(metrics.get(p.NUM_KEPT, 0)) if metrics is not None else 0
        total = int(metrics.get(p.NUM_SAMPLES, 0)) if metrics is not None else 0
        if not 1 <= kept <= total:
            return (
                f"prune reply: needs 1 <= '{p.NUM_KEPT}' <= '{p.NUM_SAMPLES}' (got {kept}, {total})"
            )
        return None
    if stage == p.STAGE_COLLECT:
        expect = json.loads(str(config[p.EXPECT]))
        wanted = {k: (tuple(v), "float32") for k, v in expect.items()}
        return _exactly(content.array_records.get(p.ARRAYS), wanted)
    if stage not in (p.STAGE_ACTIVATIONS, p.STAGE_TAIL, p.STAGE_GRADIENTS):
        return f"unexpected stage '{stage}'"
    if stage == p.STAGE_GRADIENTS:
        return "gradients reply: carries arrays" if content.array_records else None
    n, t, h = sum(config[p.SIZES]), int(config[p.TOKENS]), int(config[p.HIDDEN])
    if stage == p.STAGE_ACTIVATIONS:
        wanted = {p.ACTIVATIONS: ((n, t, h), "float32"), p.MASK: ((n, t), "bool")}
    else:
        wanted = {p.BODY_GRAD: ((n, t, h), "float32")}
    return _exactly(content.array_records.get(p.SPLIT), wanted)


def preflight(exp: Experiment) -> None:
    """The model asset is a local BERT-like folder whose depth fits the split points."""
    from fedsim.assets import cache_status, fetch

    cfg = exp.section("sfprompt")
    status = cache_status(cfg.model)
    if status.state != "yes":
        raise ValueError(
            f"sfprompt.model: model asset '{cfg.model}' is not prepared here ({status.state}); "
            f"run `fedsim datasets fetch {cfg.model}`"
        )
    model_config = json.loads((fetch(cfg.model) / "config.json").read_text())
    layers = int(model_config.get("num_hidden_layers", 0))
    try:
        cfg.points(layers).check(layers)
    except ValueError as exc:
        raise ValueError(f"sfprompt.head_layers/tail_layers: {exc}") from None
    positions = int(model_config.get("max_position_embeddings", 0))
    if cfg.prompt_count + exp.data.max_length > positions:
        raise ValueError(
            f"data.max_length: {exp.data.max_length} tokens + {cfg.prompt_count} prompts exceed "
            f"the model's {positions} positions"
        )
