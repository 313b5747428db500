"""SFPrompt client (Cao, Zhu, Gong, arXiv 2407.17533): the handlers of one round.

The client holds the HEAD (embeddings, soft prompts, first blocks) and the TAIL (last
blocks, classifier) of a frozen pretrained encoder; the server holds the BODY. A round is
several exchanges (``fedsim_methods.sfprompt.protocol``); between them the client's round lives in
``Context.state`` only (trainable arrays, optimiser state, its sample order, progress), so
any process may answer any message (Ray workers) and nothing relies on this process:

1. ``train.prune``: load the global prompts + tail; score every local sample by EL2N on
   head -> tail and keep the hardest ``gamma``; the local-loss update (``client.local_epochs``
   epochs of head -> tail on the kept samples, no traffic); plan split training.
2. per chunk of ``sfprompt.chunk_size`` micro-batches, three exchanges:
   ``train.forward`` (send head activations), ``train.tail`` (receive body outputs, run
   the tail and the loss, send d loss / d body outputs), ``train.backward`` (receive
   d loss / d head activations, backpropagate through the head, ONE optimiser step for the
   chunk). The head is recomputed in ``train.backward`` instead of keeping its autograd
   graph between calls: the frozen backbone runs without dropout, so the recomputation is
   bitwise the forward that was sent, and gradients are exact, never stale.
3. ``train``: reply with the trained prompts + tail; the round's state is dropped.

The FLOPs of every computation above are counted (``fedsim_methods.sfprompt.accounting``) and
reported with the round's result as ``client-flops``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from torch.nn import functional

from fedsim.config.schema import Experiment
from fedsim.systems.clock import WORK_FLOPS
from fedsim_methods.sfprompt import protocol as p
from fedsim_methods.sfprompt.accounting import FlopMeter
from fedsim_methods.sfprompt.centring import FeatureMean
from fedsim_methods.sfprompt.config import SFPromptConfig
from fedsim_methods.sfprompt.parts import CENTRE, TAIL_PREFIX, ClientParts
from fedsim_methods.sfprompt.plan import Chunk, chunks, epoch_order, micro_batch_loss
from fedsim_methods.sfprompt.wire import load_optimizer, optimizer_record, record_of, tensors_of

_PARTS: dict[str, ClientParts] = {}


@dataclass
class Local:
    """A client call's starting point: its data, its head and tail, the device."""

    pid: int
    cfg: SFPromptConfig
    x: torch.Tensor  # (n, max_length) token ids
    y: torch.Tensor
    pad_id: int
    parts: ClientParts
    device: torch.device

    def inputs(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.x[rows].to(self.device)
        return ids, ids != self.pad_id

    def labels(self, rows: torch.Tensor) -> torch.Tensor:
        return self.y[rows].to(self.device)

    def training_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits the loss sees: shifted by tau * log(this client's class prior) with
        ``sfprompt.logit_adjustment`` (the model itself predicts without the shift)."""
        if not self.cfg.logit_adjustment:
            return logits
        from fedsim_methods.sfprompt.logit_adjustment import logit_shift

        shift = logit_shift(self.y, logits.shape[1], self.cfg.logit_adjustment)
        return logits + shift.to(logits.device)


def parts_for(exp: Experiment, num_classes: int, device: torch.device) -> ClientParts:
    """One head + tail per process and config; arrays are loaded into it on every call."""
    from fedsim_methods.sfprompt.backbone import load_backbone

    cfg = exp.section("sfprompt")
    key = f"{cfg.model_dump_json()}|{num_classes}|{device}"
    if key not in _PARTS:
        _PARTS[key] = cfg.client_parts(load_backbone(cfg.model, str(device)), num_classes)
    return _PARTS[key]


def local(context: Context, exp: Experiment) -> Local:
    from fedsim.data.client import client_data
    from fedsim.training import pick_device

    pid = int(context.node_config["partition-id"])
    device = pick_device(exp.clients.num_gpus)
    data = client_data(exp, context)  # its partition, or its own folder
    parts = parts_for(exp, data.num_classes, device)
    for param in parts.trainable().values():
        param.grad = None
    return Local(pid, exp.section("sfprompt"), data.x, data.y, data.vocab.pad_id, parts, device)


def _optimizer(at: Local, exp: Experiment) -> torch.optim.Optimizer:
    from fedsim.training import make_optimizer

    return make_optimizer(list(at.parts.trainable().values()), exp.client)


def _progress(context: Context) -> ConfigRecord:
    if p.STATE_PROGRESS not in context.state:
        raise RuntimeError("sfprompt: a split message arrived before this round's train.prune")
    return context.state[p.STATE_PROGRESS]


def _chunk(msg: Message, context: Context, exp: Experiment) -> tuple[ConfigRecord, Chunk]:
    """This message's chunk, checked against the client's own plan (same round, in order)."""
    progress = _progress(context)
    config = msg.content["config"]
    if int(config["server-round"]) != int(progress["round"]):
        raise RuntimeError(
            f"sfprompt: message of round {config['server-round']}, state of {progress['round']}"
        )
    index = int(config[p.CHUNK])
    if index != int(progress["next-chunk"]):
        raise RuntimeError(
            f"sfprompt: chunk {index} out of order (next is {progress['next-chunk']})"
        )
    cfg = exp.section("sfprompt")
    plan = chunks(
        int(progress[p.NUM_KEPT]), exp.client.batch_size, cfg.split_epochs, cfg.chunk_size
    )
    chunk = plan[index]
    if list(config[p.SIZES]) != list(chunk.sizes):
        raise RuntimeError(f"sfprompt: server sizes {list(config[p.SIZES])} != {chunk.sizes}")
    return progress, chunk


def _rows(context: Context, chunk: Chunk) -> torch.Tensor:
    order = context.state[p.STATE_ORDER]["order"].numpy()
    return torch.from_numpy(order[chunk.start : chunk.start + chunk.total].copy())


def _count(context: Context, meter: FlopMeter) -> None:
    progress = context.state[p.STATE_PROGRESS]
    progress[p.CLIENT_FLOPS] = int(progress[p.CLIENT_FLOPS]) + meter.total


def _load_params(at: Local, context: Context) -> None:
    at.parts.load(tensors_of(context.state[p.STATE_PARAMS]))


# ----------------------------------------------------------------------------- handlers


def _kept(at: Local, exp: Experiment, meter: FlopMeter, metrics: dict) -> torch.Tensor:
    """The rows split training (or unsplit local training) uses: all of them, or with
    ``sfprompt.prune`` the hardest ``gamma`` by EL2N on head -> tail."""
    from fedsim_methods.sfprompt.el2n import el2n_scores, hardest

    if not at.cfg.prune:
        kept = torch.arange(len(at.y))
        metrics.update(label_shares(at.y, kept, at.parts.tail.classifier.out_features))
        return kept
    with torch.no_grad(), meter.measure():
        scores = el2n_scores(
            lambda rows: at.parts.client_only(*at.inputs(rows)), at.y, exp.eval.batch_size
        )
    kept = hardest(scores, at.cfg.gamma, at.y if at.cfg.prune_by_class else None)
    metrics["el2n-mean"] = float(scores.mean())
    metrics["el2n-kept-mean"] = float(scores[kept].mean())
    metrics.update(label_shares(at.y, kept, at.parts.tail.classifier.out_features))
    return kept


def label_shares(y: torch.Tensor, kept: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Each class's share of the client's samples and of the ones it trains on: averaged
    over the round's clients (weighted by samples trained), the label mix the global model
    was pulled towards that round (label-skew diagnostics)."""
    out = {}
    for c in range(num_classes):
        out[f"label-share.{c}"] = float((y == c).double().mean()) if len(y) else 0.0
        out[f"kept-label-share.{c}"] = float((y[kept] == c).double().mean()) if len(kept) else 0.0
    return out


def _local_epochs(
    at: Local,
    exp: Experiment,
    kept: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    meter: FlopMeter,
    server_round: int,
    features: FeatureMean | None = None,
) -> float:
    """``client.local_epochs`` epochs of head -> tail on ``kept`` (no traffic): SFPrompt's
    local-loss update, or the whole of an unsplit baseline's local training. Returns the
    mean micro-batch loss; ``features`` (unsplit centring) sums the pooled features seen."""
    from fedsim.seeding import purpose, torch_generator
    from fedsim.training import batches

    gen = torch_generator(exp.run.seed, server_round, at.pid, purpose("sfprompt.local-loss"))
    total, steps = 0.0, 0
    for _ in range(exp.client.local_epochs):
        for idx in batches(len(kept), exp.client.batch_size, gen):
            rows = kept[idx]
            optimizer.zero_grad(set_to_none=True)
            with meter.measure():
                pooled = at.parts.tail.features(*at.parts.head(*at.inputs(rows)))
                logits = at.training_logits(at.parts.tail.classify(pooled))
                loss = functional.cross_entropy(logits, at.labels(rows))
                loss.backward()
            if features is not None:
                features.add(pooled)
            optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1
    return total / max(steps, 1)


def prune(msg: Message, context: Context, exp: Experiment) -> Message:
    """EL2N pruning, the local-loss update, and the plan of split training."""
    from fedsim.seeding import derive_seed, purpose

    server_round = int(msg.content["config"]["server-round"])
    at = local(context, exp)
    cfg = at.cfg
    for key in p.STATE_KEYS:  # a round a failure interrupted leaves nothing behind
        if key in context.state:
            del context.state[key]
    at.parts.load(tensors_of(msg.content[p.ARRAYS]))
    metrics: dict[str, float | int] = {p.NUM_SAMPLES: len(at.y)}
    meter = FlopMeter()
    kept = _kept(at, exp, meter, metrics)
    optimizer = _optimizer(at, exp)
    if cfg.local_loss:
        metrics["local-loss"] = _local_epochs(at, exp, kept, optimizer, meter, server_round)

    seed = derive_seed(exp.run.seed, server_round, at.pid, purpose("sfprompt.split-order"))
    order = epoch_order(kept, cfg.split_epochs, torch.Generator().manual_seed(seed))
    context.state[p.STATE_PARAMS] = record_of(at.parts.state())
    context.state[p.STATE_OPTIMIZER] = optimizer_record(optimizer)
    context.state[p.STATE_ORDER] = record_of({"order": order})
    context.state[p.STATE_PROGRESS] = ConfigRecord(
        {
            "round": server_round,
            "next-chunk": 0,
            p.NUM_KEPT: len(kept),
            "loss-sum": 0.0,
            "loss-samples": 0,
            p.CLIENT_FLOPS: meter.total,
            "metrics": json.dumps(metrics),
        }
    )
    reply = MetricRecord({**metrics, p.NUM_KEPT: len(kept)})
    return Message(RecordDict({"metrics": reply}), reply_to=msg)


def forward(msg: Message, context: Context, exp: Experiment) -> Message:
    """Head activations (and their attention mask) of one chunk, micro-batch by micro-batch."""
    at = local(context, exp)
    _, chunk = _chunk(msg, context, exp)
    _load_params(at, context)
    rows = _rows(context, chunk)
    hidden, masks = [], []
    meter = FlopMeter()
    with torch.no_grad(), meter.measure():
        for part in chunk.micro_batches():
            h, m = at.parts.head(*at.inputs(rows[part]))
            hidden.append(h)
            masks.append(m)
    _count(context, meter)
    arrays = {p.ACTIVATIONS: torch.cat(hidden), p.MASK: torch.cat(masks)}
    return Message(RecordDict({p.SPLIT: record_of(arrays)}), reply_to=msg)


def tail(msg: Message, context: Context, exp: Experiment) -> Message:
    """The tail and the loss on the body's outputs; d L_chunk / d body outputs go back, the
    tail's own gradients wait in ``Context.state`` for the chunk's optimiser step."""
    at = local(context, exp)
    progress, chunk = _chunk(msg, context, exp)
    _load_params(at, context)
    rows = _rows(context, chunk)
    body_out = tensors_of(msg.content[p.SPLIT])[p.BODY_OUT]
    grads, loss_sum = [], 0.0
    meter = FlopMeter()
    features = FeatureMean.of(context.state.get(p.STATE_FEATURES))
    for part in chunk.micro_batches():
        _, token_mask = at.inputs(rows[part])
        out = body_out[part].to(at.device).requires_grad_(True)
        with meter.measure():
            pooled = at.parts.tail.features(out, at.parts.head.mask(token_mask))
            logits = at.training_logits(at.parts.tail.classify(pooled))
            loss = micro_batch_loss(logits, at.labels(rows[part]), chunk.total)
            loss.backward()  # accumulates into the tail's .grad over the micro-batches
        if at.cfg.centre_features:
            features.add(pooled)
        grads.append(out.grad)
        loss_sum += float(loss.detach()) * chunk.total
    _count(context, meter)
    tail_grads = {
        k: param.grad if param.grad is not None else torch.zeros_like(param)
        for k, param in at.parts.trainable().items()
        if k.startswith(TAIL_PREFIX)
    }
    context.state[p.STATE_GRADS] = record_of(tail_grads)
    if at.cfg.centre_features:
        context.state[p.STATE_FEATURES] = features.record()
    progress["loss-sum"] = float(progress["loss-sum"]) + loss_sum
    progress["loss-samples"] = int(progress["loss-samples"]) + chunk.total
    reply = record_of({p.BODY_GRAD: torch.cat(grads)})
    return Message(RecordDict({p.SPLIT: reply}), reply_to=msg)


def backward(msg: Message, context: Context, exp: Experiment) -> Message:
    """Backpropagate the server's gradient through the (recomputed) head, then one
    optimiser step for the chunk with the tail's stored gradients."""
    at = local(context, exp)
    progress, chunk = _chunk(msg, context, exp)
    if p.STATE_GRADS not in context.state:
        raise RuntimeError("sfprompt: train.backward before train.tail for this chunk")
    _load_params(at, context)
    params = at.parts.trainable()
    for key, grad in tensors_of(context.state[p.STATE_GRADS]).items():
        params[key].grad = grad.to(at.device)
    if at.cfg.head_trains:  # prompts, or (SplitFed) the head's own weights
        head_grad = tensors_of(msg.content[p.SPLIT])[p.HEAD_GRAD]
        rows = _rows(context, chunk)
        meter = FlopMeter()
        with meter.measure():
            for part in chunk.micro_batches():
                hidden, _ = at.parts.head(*at.inputs(rows[part]))
                hidden.backward(head_grad[part].to(at.device))
        _count(context, meter)
    optimizer = _optimizer(at, exp)
    load_optimizer(optimizer, context.state[p.STATE_OPTIMIZER])
    optimizer.step()
    context.state[p.STATE_PARAMS] = record_of(at.parts.state())
    context.state[p.STATE_OPTIMIZER] = optimizer_record(optimizer)
    del context.state[p.STATE_GRADS]
    progress["next-chunk"] = chunk.index + 1
    return Message(RecordDict({"metrics": MetricRecord({"chunk": chunk.index})}), reply_to=msg)


def train(msg: Message, context: Context, exp: Experiment) -> Message:
    """The round's result: trained prompts + tail, weighted by the samples trained on."""
    cfg = exp.section("sfprompt")
    if not cfg.split:
        return train_unsplit(msg, context, exp)
    progress = _progress(context)
    kept = int(progress[p.NUM_KEPT])
    planned = len(chunks(kept, exp.client.batch_size, cfg.split_epochs, cfg.chunk_size))
    if int(progress["next-chunk"]) != planned:
        raise RuntimeError(
            f"sfprompt: split training stopped after {progress['next-chunk']} of {planned} chunks"
        )
    arrays = _with_centre(context.state[p.STATE_PARAMS], context.state.get(p.STATE_FEATURES))
    samples = int(progress["loss-samples"])
    metrics = {
        **json.loads(str(progress["metrics"])),
        "train_loss": float(progress["loss-sum"]) / max(samples, 1),
        p.NUM_KEPT: kept,
        p.CLIENT_FLOPS: float(progress[p.CLIENT_FLOPS]),
        WORK_FLOPS: float(progress[p.CLIENT_FLOPS]),  # the virtual clock's compute ([systems])
        "num-examples": kept,
    }
    for key in p.STATE_KEYS:
        if key in context.state:
            del context.state[key]
    content = RecordDict({p.ARRAYS: arrays, "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=msg)


def train_unsplit(msg: Message, context: Context, exp: Experiment) -> Message:
    """The unsplit baselines' whole round (``sfprompt.mode``): local training of the
    whole encoder on the client (prompts + classifier, or every weight), on all samples or
    the EL2N-kept ones, then the trained arrays up. Nothing is kept between rounds."""
    server_round = int(msg.content["config"]["server-round"])
    at = local(context, exp)
    at.parts.load(tensors_of(msg.content[p.ARRAYS]))
    metrics: dict[str, float | int] = {p.NUM_SAMPLES: len(at.y)}
    meter = FlopMeter()
    kept = _kept(at, exp, meter, metrics)
    features = FeatureMean() if at.cfg.centre_features else None
    loss = _local_epochs(at, exp, kept, _optimizer(at, exp), meter, server_round, features)
    metrics.update({"train_loss": loss, p.NUM_KEPT: len(kept), "num-examples": len(kept)})
    metrics[p.CLIENT_FLOPS] = metrics[WORK_FLOPS] = float(meter.total)
    arrays = _with_centre(record_of(at.parts.state()), features.record() if features else None)
    content = RecordDict({p.ARRAYS: arrays, "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=msg)


def _with_centre(arrays: ArrayRecord, features: ArrayRecord | None) -> ArrayRecord:
    """``arrays`` with ``tail.centre`` replaced by the mean pooled feature this client
    trained on (what FedAvg averages into next round's centre); unchanged without
    centring or without samples."""
    mean = FeatureMean.of(features).mean()
    if CENTRE not in arrays or mean is None:
        return arrays
    out = ArrayRecord({k: a for k, a in arrays.items()})
    out[CENTRE] = record_of({CENTRE: mean})[CENTRE]
    return out
