"""SFPrompt: the split of a real pretrained encoder (MiniLM-L6) is exact, and the method
runs end to end with its split traffic counted byte for byte.

Exactness, on real Rotten Tomatoes snippets (16 WordPiece ids), CPU, one torch thread:
head -> body -> tail equals the unsplit Hugging Face model bitwise, forward and backward;
accumulating a chunk over micro-batches equals one pass over the chunk to float rounding;
a whole split round equals centralised SGD on the unsplit model, bitwise.
"""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from torch.nn import functional

from fedsim.config import load_experiment
from fedsim.text import token_ids
from fedsim_methods.sfprompt import protocol as p
from fedsim_methods.sfprompt.backbone import load_backbone
from fedsim_methods.sfprompt.el2n import el2n, el2n_scores, hardest
from fedsim_methods.sfprompt.parts import Body, SplitPoints, client_parts, initialise, mean_pool
from fedsim_methods.sfprompt.plan import (
    Chunk,
    chunks,
    epoch_order,
    micro_batch_loss,
    micro_batch_sizes,
)
from fedsim_methods.sfprompt.wire import load_optimizer, optimizer_record, record_of, tensors_of

NPY_HEADER = 128  # bytes Flower's np.save serialisation adds to every array
SNIPPETS = [
    "a gripping, funny and moving film",
    "dull",
    "what a waste of two hours of my life, and of a fine cast",
    "the best thing about it is the soundtrack",
    "an instant classic",
    "it never decides what it wants to be",
]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("minilm-l6")


@pytest.fixture(scope="module")
def batch():
    ids = torch.from_numpy(token_ids(SNIPPETS, 16))
    return ids, ids != 0, torch.tensor([1, 0, 0, 1, 1, 0])


def wire(tensor: torch.Tensor) -> torch.Tensor:
    """What the other side receives: a detached copy through an ArrayRecord."""
    return tensors_of(record_of({"t": tensor}))["t"]


def parts_on(backbone, points: SplitPoints):
    parts = client_parts(backbone, points, num_classes=2)
    initialise(parts, seed=7)
    return parts, Body(backbone, points)


def unsplit_logits(reference, parts, ids, token_mask):
    """The unsplit model: Hugging Face's BertModel.forward over prompts + word embeddings
    (``reference``'s own blocks, all of them), mean pooling, the tail's classifier."""
    embeds, mask = parts.head.input_embeddings(ids, token_mask)
    hidden = reference(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    return parts.tail.classifier(mean_pool(hidden, mask, parts.head.num_prompts))


# ------------------------------------------------------------------ (a) forward


@pytest.mark.parametrize(
    "points",
    [SplitPoints(1, 1, 4), SplitPoints(2, 0, 3), SplitPoints(0, 2, 0), SplitPoints(0, 0, 4)],
)
def test_split_forward_equals_unsplit_model(backbone, batch, points):
    ids, token_mask, _ = batch
    parts, body = parts_on(backbone, points)
    with torch.no_grad():
        activations, mask = parts.head(ids, token_mask)
        body_out = body(wire(activations), wire(mask))
        split = parts.tail(wire(body_out), mask)
        unsplit = unsplit_logits(backbone, parts, ids, token_mask)
    assert activations.shape == (6, 16 + points.num_prompts, 384)
    assert torch.equal(split, unsplit)
    if points.num_prompts == 0:  # the plain input_ids path of the unsplit model, too
        with torch.no_grad():
            hidden = backbone(input_ids=ids, attention_mask=token_mask).last_hidden_state
            plain = parts.tail.classifier(mean_pool(hidden, token_mask, 0))
        assert torch.equal(split, plain)


# ------------------------------------------------------------------ (b) backward


@pytest.mark.parametrize("points", [SplitPoints(2, 1, 4), SplitPoints(0, 0, 4)])
def test_split_backward_equals_autograd_through_unsplit_model(backbone, batch, points):
    """At 2/1 and at the paper's split (0/0: the client holds the embeddings, the prompts
    and the classifier; every block is the server's)."""
    ids, token_mask, labels = batch
    parts, body = parts_on(backbone, points)
    n = len(labels)

    # split, as the messages go: the client sends detached activations, the server sends
    # back d loss / d activations, and the client recomputes its head to backpropagate.
    with torch.no_grad():
        sent, mask = parts.head(ids, token_mask)
    server_in = wire(sent).requires_grad_(True)
    server_out = body(server_in, wire(mask))
    client_in = wire(server_out).requires_grad_(True)
    micro_batch_loss(parts.tail(client_in, mask), labels, n).backward()
    server_out.backward(wire(client_in.grad))
    recomputed, _ = parts.head(ids, token_mask)
    recomputed.backward(wire(server_in.grad))
    split = {k: v.grad.clone() for k, v in parts.trainable().items()}

    # unsplit: plain autograd through Hugging Face's forward, the tail block trainable
    reference = copy.deepcopy(backbone)
    tail_blocks = reference.encoder.layer[len(reference.encoder.layer) - points.tail_layers :]
    tail_blocks.requires_grad_(True)
    twin, _ = parts_on(backbone, points)
    twin.load(parts.state())
    micro_batch_loss(unsplit_logits(reference, twin, ids, token_mask), labels, n).backward()

    assert torch.equal(split["prompts"], twin.head.prompts.grad)
    for b, block in enumerate(tail_blocks):
        for name, param in block.named_parameters():
            assert torch.equal(split[f"tail.blocks.{b}.{name}"], param.grad), name
    assert len([k for k in split if k.startswith("tail.blocks.")]) == 16 * points.tail_layers
    assert torch.equal(split["tail.classifier.weight"], twin.tail.classifier.weight.grad)
    assert torch.equal(split["tail.classifier.bias"], twin.tail.classifier.bias.grad)
    assert split["prompts"].abs().sum() > 0


def test_the_flop_meter_counts_what_torchs_flop_counter_counts(backbone, batch):
    """``FlopMeter`` sums torch's own per-op formulas without FlopCounterMode's module
    bookkeeping: the same total on a split step (head, tail, the head recomputed backward)
    and on a training step of the whole encoder, and the same gradients."""
    from torch.utils.flop_counter import FlopCounterMode

    from fedsim_methods.sfprompt.accounting import FlopMeter

    ids, token_mask, labels = batch

    def split_step(parts, body):
        activations, mask = parts.head(ids, token_mask)
        logits = parts.tail(body(activations, mask), mask)
        micro_batch_loss(logits, labels, len(labels)).backward()

    def whole_step(model):
        hidden = model(input_ids=ids, attention_mask=token_mask).last_hidden_state
        functional.cross_entropy(hidden.mean(1)[:, :2], labels).backward()

    for make, step in [
        (lambda: parts_on(backbone, SplitPoints(1, 1, 4)), lambda m: split_step(*m)),
        (lambda: copy.deepcopy(backbone).requires_grad_(True), whole_step),
    ]:
        ours, theirs = make(), make()
        meter = FlopMeter()
        with meter.measure():
            step(ours)
        with FlopCounterMode(display=False) as counter:
            step(theirs)
        assert meter.total == counter.get_total_flops() > 0
        grads, twin_grads = _grads(ours), _grads(theirs)
        assert grads and len(grads) == len(twin_grads)
        assert all(torch.equal(a, b) for a, b in zip(grads, twin_grads))


def test_bf16_runs_the_blocks_in_bfloat16_and_keeps_the_split_exact(backbone, batch):
    """``sfprompt.precision = "bf16"``: the split model under autocast is still bitwise the
    unsplit one run under the same autocast, its logits move only by bfloat16's rounding,
    what crosses the split stays float32, and the FLOPs counted are fp32's."""
    from fedsim_methods.sfprompt.accounting import FlopMeter

    ids, token_mask, labels = batch
    points = SplitPoints(0, 0, 4)  # the paper's split: every block on the server
    exact, _ = parts_on(backbone, points)
    parts = client_parts(backbone, points, num_classes=2, dtype=torch.bfloat16)
    initialise(parts, seed=7)
    body = Body(backbone, points, torch.bfloat16)
    with torch.no_grad():
        activations, mask = parts.head(ids, token_mask)
        body_out = body(wire(activations), wire(mask))
        split = parts.tail(wire(body_out), mask)
        embeds, full_mask = parts.head.input_embeddings(ids, token_mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the encoder only, as bf16 does
            hidden = backbone(inputs_embeds=embeds, attention_mask=full_mask).last_hidden_state
        unsplit = parts.tail.classifier(mean_pool(hidden, full_mask, points.num_prompts))
        fp32 = unsplit_logits(backbone, exact, ids, token_mask)
    assert activations.dtype == body_out.dtype == split.dtype == torch.float32
    assert torch.equal(split, unsplit)
    assert not torch.equal(split, fp32) and torch.allclose(split, fp32, atol=0.05)

    counts = []
    for dtype in (None, torch.bfloat16):
        model = client_parts(backbone, points, num_classes=2, dtype=dtype)
        initialise(model, seed=7)
        meter = FlopMeter()
        with meter.measure():
            sent, mask = model.head(ids, token_mask)
            out = Body(backbone, points, dtype)(sent, mask)
            micro_batch_loss(model.tail(out, mask), labels, len(labels)).backward()
        counts.append(meter.total)
        assert model.head.prompts.grad is not None and model.head.prompts.grad.abs().sum() > 0
    assert counts[0] == counts[1] > 0


def _grads(model) -> list[torch.Tensor]:
    """The gradients of a whole model, or of a (client parts, body) pair's trainable part."""
    params = model[0].trainable().values() if isinstance(model, tuple) else model.parameters()
    return [q.grad for q in params if q.grad is not None]


# ------------------------------------------------------------------ (c) chunks


def test_chunk_accumulation_equals_mean_loss_in_one_pass(backbone, batch):
    """Micro-batches of 4, 4 and 2 in one chunk, each adding sum(CE) / 10: the gradient of
    the chunk's mean loss. Against one pass of mean CE over all 10, equal up to the order of
    float sums: within 1e-5 of the largest gradient entry (the attention key biases' gradient
    is zero in exact arithmetic, softmax being shift-invariant: only rounding is left)."""
    ids, token_mask, labels = batch
    ids, token_mask = torch.cat([ids, ids[:4]]), torch.cat([token_mask, token_mask[:4]])
    labels = torch.cat([labels, labels[:4]])
    parts, body = parts_on(backbone, SplitPoints(1, 1, 4))

    def grads(sizes: tuple[int, ...]) -> dict[str, torch.Tensor]:
        for param in parts.trainable().values():
            param.grad = None
        chunk = Chunk(0, 0, sizes)
        for part in chunk.micro_batches():
            hidden, mask = parts.head(ids[part], token_mask[part])
            logits = parts.tail(body(hidden, mask), mask)
            micro_batch_loss(logits, labels[part], chunk.total).backward()
        return {k: v.grad.clone() for k, v in parts.trainable().items()}

    accumulated = grads((4, 4, 2))
    for param in parts.trainable().values():
        param.grad = None
    hidden, mask = parts.head(ids, token_mask)
    functional.cross_entropy(parts.tail(body(hidden, mask), mask), labels).backward()
    scale = max(float(param.grad.abs().max()) for param in parts.trainable().values())
    for key, param in parts.trainable().items():
        assert torch.allclose(accumulated[key], param.grad, rtol=1e-4, atol=1e-5 * scale), key
    assert torch.equal(accumulated["prompts"], grads((4, 4, 2))["prompts"])  # repeatable


def test_chunks_cover_every_epoch_in_order():
    assert micro_batch_sizes(10, 4, 2) == [4, 4, 2, 4, 4, 2]
    plan = chunks(10, 4, 2, 4)
    assert [c.sizes for c in plan] == [(4, 4, 2, 4), (4, 2)]
    assert [c.start for c in plan] == [0, 14] and sum(c.total for c in plan) == 20
    order = epoch_order(torch.arange(10, 20), 2, torch.Generator().manual_seed(0))
    assert sorted(order[:10].tolist()) == sorted(order[10:].tolist()) == list(range(10, 20))


# ------------------------------------------------------------------ (d) EL2N


def test_el2n_scores_equal_a_direct_computation(backbone, batch):
    ids, token_mask, labels = batch
    parts, _ = parts_on(backbone, SplitPoints(1, 1, 4))
    scores = el2n_scores(lambda rows: parts.client_only(ids[rows], token_mask[rows]), labels, 4)
    with torch.no_grad():
        logits = parts.client_only(ids, token_mask)
    direct = []
    for row, label in zip(logits.tolist(), labels.tolist()):
        probs = [math.exp(v) / sum(math.exp(u) for u in row) for v in row]
        direct.append(math.sqrt(sum((q - (k == label)) ** 2 for k, q in enumerate(probs))))
    assert torch.allclose(scores, torch.tensor(direct), rtol=1e-5, atol=1e-6)
    # scored in batches of 4 above, in one batch here: the same up to matmul rounding
    assert torch.allclose(el2n(logits, labels), scores, rtol=1e-6, atol=1e-7)
    kept = hardest(scores, 0.5)  # ceil(0.5 * 6) = 3 largest
    assert kept.tolist() == sorted(np.argsort(-np.array(direct), kind="stable")[:3].tolist())
    assert hardest(torch.tensor([0.5, 0.9, 0.5, 0.1]), 0.5).tolist() == [0, 1]  # tie: lower
    assert hardest(torch.tensor([0.2, 0.1]), 0.01).tolist() == [0]  # at least one
    # by class: the hardest half of each class, however the other class scores
    by_class = hardest(
        torch.tensor([0.9, 0.8, 0.7, 0.1, 0.2, 0.3]), 0.5, torch.tensor([0, 0, 0, 1, 1, 1])
    )
    assert by_class.tolist() == [0, 1, 4, 5]  # ceil(0.5 * 3) = 2 of each


def test_logit_adjustment_shifts_by_the_clients_own_smoothed_prior():
    from fedsim_methods.sfprompt.logit_adjustment import logit_shift

    labels = torch.tensor([1, 1, 1, 1, 0, 1])  # 1 of class 0, 5 of class 1
    expected = torch.log(torch.tensor([2 / 8, 6 / 8])) * 0.5
    assert torch.allclose(logit_shift(labels, 2, 0.5), expected)
    assert torch.isfinite(logit_shift(torch.tensor([1, 1]), 3, 1.0)).all()  # absent classes
    assert torch.equal(logit_shift(labels, 2, 0.0), torch.zeros(2))


# ------------------------------------------------------------------ client state


@pytest.mark.parametrize("fused", [None, True])  # client.fused: torch's fused kernel
def test_optimizer_state_survives_the_round_trip(backbone, fused):
    weights = torch.nn.Parameter(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)))

    def step(optimizer, scale: float) -> None:
        optimizer.zero_grad()
        (weights * scale).pow(2).sum().backward()
        optimizer.step()

    start = weights.detach().clone()
    straight = torch.optim.Adam([weights], lr=0.1, fused=fused)
    step(straight, 1.0)
    step(straight, 2.0)
    expected = weights.detach().clone()
    with torch.no_grad():
        weights.copy_(start)
    first = torch.optim.Adam([weights], lr=0.1, fused=fused)
    step(first, 1.0)
    saved = optimizer_record(first)
    resumed = torch.optim.Adam([weights], lr=0.1, fused=fused)
    load_optimizer(resumed, saved)
    step(resumed, 2.0)
    assert torch.equal(weights.detach(), expected)


# ------------------------------------------------------------------ the method

TOML = """
method = "sfprompt"
[run]
name = "sfprompt-test"
seed = 0
rounds = 2
[data]
dataset = "rotten_tomatoes"
partitioner = "iid"
max_train_samples = 64
max_length = 16
min_partition_size = 0
[client]
local_epochs = 1
batch_size = 4
optimizer = "adam"
lr = 0.001
[clients]
num = 2
per_round = 2
[eval]
max_samples = 32
batch_size = 32
[sfprompt]
head_layers = 1
tail_layers = 1
num_prompts = 4
gamma = 0.5
chunk_size = 2
"""


@pytest.fixture
def toml(tmp_path: Path) -> Path:
    path = tmp_path / "sfprompt.toml"
    path.write_text(TOML)
    return path


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> tuple[Path, dict]:
    """The 2-round run of TOML, uninterrupted: (run dir, summary)."""
    from fedsim.runner import run_experiment

    folder = tmp_path_factory.mktemp("sfprompt")
    (folder / "sfprompt.toml").write_text(TOML)
    return run_experiment(load_experiment(folder / "sfprompt.toml"), folder / "run")


def _comm(run_dir: Path) -> list[dict]:
    with open(run_dir / "comm.csv") as f:
        return list(csv.DictReader(f))


def test_sfprompt_runs_and_counts_split_traffic_exactly(reference_run, toml):
    run_dir, summary = reference_run
    assert summary["status"] == "completed", summary

    rows = _comm(run_dir)
    stages = {r["stage"] for r in rows}
    assert stages == {
        p.STAGE_PRUNE, p.STAGE_ACTIVATIONS, p.STAGE_TAIL, p.STAGE_GRADIENTS, p.STAGE_COLLECT
    }  # fmt: skip
    # 32 samples per client, 16 kept (gamma 0.5), micro-batches of 4, 2 per chunk: 2 chunks
    # of 8 samples x (16 tokens + 4 prompts) x 384 floats each way per split stage.
    act = 8 * (16 + 4) * 384 * 4 + NPY_HEADER
    mask = 8 * (16 + 4) * 1 + NPY_HEADER
    expected = {
        (p.STAGE_ACTIVATIONS, "up"): act + mask,
        (p.STAGE_ACTIVATIONS, "down"): 0,
        (p.STAGE_TAIL, "down"): act,
        (p.STAGE_TAIL, "up"): act,
        (p.STAGE_GRADIENTS, "down"): act,
        (p.STAGE_GRADIENTS, "up"): 0,
    }
    for (stage, direction), size in expected.items():
        got = [int(r["bytes"]) for r in rows if r["stage"] == stage and r["direction"] == direction]
        assert got == [size] * (2 * 2 * 2), (stage, direction, got)  # rounds x clients x chunks
    # the model (prompts + tail) goes down with train.prune and comes back with train
    model_arrays = _model_arrays(toml)
    model = sum(a.numpy().nbytes + NPY_HEADER for a in model_arrays.values())
    for stage, direction in ((p.STAGE_PRUNE, "down"), (p.STAGE_COLLECT, "up")):
        got = [int(r["bytes"]) for r in rows if r["stage"] == stage and r["direction"] == direction]
        assert got == [model] * 4
    assert model_arrays["prompts"].shape == (4, 384)

    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["scope"] == "train"]
    assert [m["clients"] for m in train] == [2, 2] and all(m["failures"] == 0 for m in train)
    assert all(m["num-kept"] == 16 and m["train_loss"] > 0 for m in train)
    assert len([m for m in metrics if m["scope"] == "server-eval"]) == 3
    # accounting: prompts (4 x 384) + one BERT block + a 384 x 2 classifier train, against
    # MiniLM-L6 without its unused pooler (22,565,376) + the classifier; FLOPs
    # counted, a small fraction of full fine-tuning's
    block = 4 * (384 * 384 + 384) + 2 * (384 * 1536) + 1536 + 384 + 2 * 2 * 384
    assert all(m["trainable-params"] == 4 * 384 + block + 384 * 2 + 2 for m in train)
    assert all(m["full-ft-params"] == 22_565_376 + 384 * 2 + 2 for m in train)
    assert all(m["client-flops"] > 0 and 0 < m["flops-ratio"] < 1 for m in train)


def test_a_bf16_run_moves_and_counts_what_fp32_does_and_repeats_to_the_byte(
    reference_run, toml, tmp_path
):
    """``sfprompt.precision = "bf16"`` (with ``client.fused``, as the experiment runs)
    changes the arithmetic only: the same traffic to the byte, the same FLOPs, losses near
    fp32's; and two runs give the same bytes."""
    from fedsim.runner import run_experiment

    reference, _ = reference_run
    overrides = ["sfprompt.precision=bf16", "client.fused=true"]
    runs = [
        run_experiment(load_experiment(toml, overrides), tmp_path / name)[0]
        for name in ("bf16", "again")
    ]
    assert (runs[0] / "metrics.jsonl").read_bytes() == (runs[1] / "metrics.jsonl").read_bytes()
    assert (runs[0] / "comm.csv").read_bytes() == (reference / "comm.csv").read_bytes()

    def rows(run_dir: Path, scope: str) -> list[dict]:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [m for m in map(json.loads, lines) if m["scope"] == scope]

    ours, theirs = rows(runs[0], "train"), rows(reference, "train")
    assert [m["client-flops"] for m in ours] == [m["client-flops"] for m in theirs]
    assert [m["train_loss"] for m in ours] != [m["train_loss"] for m in theirs]
    for a, b in zip(ours, theirs):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=0.05)


def _model_arrays(toml: Path, overrides: list[str] | None = None) -> ArrayRecord:
    """The global prompts + tail (their shapes are what travels each round)."""
    from fedsim_methods.strategies.sfprompt import initial_arrays

    return initial_arrays(load_experiment(toml, overrides or []))


def test_an_interrupted_run_resumes_to_the_same_bytes(reference_run, toml, tmp_path):
    """Client state lives in Context.state only within a round, so a run stopped after
    round 1 and resumed ends byte-identical to the uninterrupted one."""
    from helpers import CrashAfter

    from fedsim.runner import RunError, resume_run, run_experiment

    reference = reference_run[0]
    crashed = tmp_path / "crashed"
    with pytest.raises(RunError):
        run_experiment(load_experiment(toml), crashed, callbacks=[CrashAfter(1)])
    _, summary = resume_run(crashed)
    assert summary["status"] == "completed"
    for name in ("metrics.jsonl", "comm.csv"):
        assert (crashed / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.slow  # two SplitFed runs that train the whole encoder; the fast suite keeps
# the body's exact update (test_splitfed_v1_round_equals_centralised_sgd_with_every_layer_
# trained) and the split run's resume (test_an_interrupted_run_resumes_to_the_same_bytes)
def test_a_splitfed_run_resumes_with_the_trained_body(toml, tmp_path):
    """The server's trained body is part of the global arrays, so it is checkpointed: a
    SplitFed-V1 run stopped after round 1 and resumed ends byte-identical."""
    from helpers import CrashAfter

    from fedsim.runner import RunError, resume_run, run_experiment

    overrides = ["sfprompt.prompts=false", "sfprompt.prune=false", "sfprompt.local_loss=false",
                 "sfprompt.train_head=true", "sfprompt.train_body=true",
                 "data.max_train_samples=32"]  # fmt: skip
    exp = load_experiment(toml, overrides)
    straight, summary = run_experiment(exp, tmp_path / "straight")
    assert summary["status"] == "completed"
    crashed = tmp_path / "crashed"
    with pytest.raises(RunError):
        run_experiment(exp, crashed, callbacks=[CrashAfter(1)])
    resume_run(crashed)
    for name in ("metrics.jsonl", "comm.csv"):
        assert (crashed / name).read_bytes() == (straight / name).read_bytes(), name
    evals = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in evals if row["scope"] == "server-eval"]
    assert len(set(losses)) == 3  # the trained body changes the global model every round


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one Ray cluster or local SuperLink at a time (xdist)
@pytest.mark.parametrize("backend", ["ray", "flwr-run"])
def test_split_rounds_give_the_inprocess_bytes_on_ray_and_flwr_run(
    reference_run, toml, tmp_path, backend
):
    """Many exchanges per round and client state in Context.state between them: fedsim's
    Ray workers and Flower's own runtime (``flwr run .``, a local SuperLink) give the
    in-process bytes."""
    from test_flwr_run import flwr_run

    from fedsim.runner import run_experiment

    if backend == "ray":
        remote, summary = run_experiment(
            load_experiment(toml, ["run.backend='ray'"]), tmp_path / "r"
        )
        assert summary["status"] == "completed" and summary["client_failures"] == 0
    else:
        remote = flwr_run(toml, "", 2, tmp_path)
    reference = reference_run[0]
    for name in ("metrics.jsonl", "comm.csv"):
        assert (remote / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_splitfed_v1_gives_the_inprocess_bytes_on_ray(toml, tmp_path):
    """SplitFed-V1 trains the head on the workers and the body on the server: Ray's
    workers give the in-process bytes, the feature centre included, in bf16 as the
    experiment runs (autocast in the worker processes and on the server)."""
    from fedsim.runner import run_experiment

    overrides = ["sfprompt.prompts=false", "sfprompt.prune=false", "sfprompt.local_loss=false",
                 "sfprompt.train_head=true", "sfprompt.train_body=true",
                 "sfprompt.centre_features=true", "data.max_train_samples=32",
                 "sfprompt.precision=bf16"]  # fmt: skip
    runs = {}
    for backend in ("inprocess", "ray"):
        exp = load_experiment(toml, [*overrides, f"run.backend='{backend}'"])
        runs[backend], summary = run_experiment(exp, tmp_path / backend)
        assert summary["status"] == "completed" and summary["client_failures"] == 0
    for name in ("metrics.jsonl", "comm.csv"):
        assert (runs["ray"] / name).read_bytes() == (runs["inprocess"] / name).read_bytes()


def test_a_client_failing_mid_split_is_left_out_of_the_round(toml, tmp_path, monkeypatch):
    """Client 1 raises in its first train.tail: it gets no more split messages that round,
    is not averaged, and counts as a training failure; client 0 finishes."""
    import fedsim_methods.clients.sfprompt as handlers
    from fedsim.runner import run_experiment

    real_tail = handlers.tail

    def flaky_tail(msg, context, exp):
        if int(context.node_config["partition-id"]) == 1:
            raise RuntimeError("injected fault")
        return real_tail(msg, context, exp)

    monkeypatch.setattr(handlers, "tail", flaky_tail)
    run_dir, summary = run_experiment(load_experiment(toml, ["run.rounds=1"]), tmp_path / "f")
    assert summary["status"] == "completed", summary
    rows = _comm(run_dir)
    after = [r for r in rows if r["stage"] in (p.STAGE_GRADIENTS, p.STAGE_COLLECT)]
    assert after and {r["partition_id"] for r in after} == {"0"}
    train = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[1])
    assert train["scope"] == "train" and (train["clients"], train["failures"]) == (1, 1)
    assert "injected fault" in (run_dir / "log.txt").read_text()


def test_splitfed_mode_sends_no_head_gradients(toml, tmp_path):
    from fedsim.runner import run_experiment

    overrides = ["run.rounds=1", "sfprompt.prompts=false", "sfprompt.prune=false",
                 "sfprompt.local_loss=false"]  # fmt: skip
    run_dir, summary = run_experiment(load_experiment(toml, overrides), tmp_path / "splitfed")
    assert summary["status"] == "completed", summary
    rows = _comm(run_dir)
    grads = [int(r["bytes"]) for r in rows if r["stage"] == p.STAGE_GRADIENTS]
    acts = [
        int(r["bytes"])
        for r in rows
        if r["stage"] == p.STAGE_ACTIVATIONS and r["direction"] == "up"
    ]
    assert grads and set(grads) == {0}
    # all 32 samples per client: 4 chunks of 8 samples x 16 tokens (no prompts)
    assert acts == [8 * 16 * 384 * 4 + NPY_HEADER + 8 * 16 + NPY_HEADER] * 8


@pytest.mark.parametrize("mode", ["prompt-tuning", "full-finetune"])
def test_unsplit_baselines_train_the_whole_encoder_on_the_client(toml, tmp_path, mode):
    """The federated baselines SFPrompt is compared with: one ``train`` exchange per round
    carrying exactly the trainable arrays, and the accounting on the same scale (full
    fine-tuning's measured FLOPs are the reference's, exactly)."""
    from fedsim.runner import run_experiment

    overrides = ["run.rounds=1", f"sfprompt.mode='{mode}'", "sfprompt.prune=false",
                 "sfprompt.head_layers=0", "sfprompt.tail_layers=0"]  # fmt: skip
    if mode == "full-finetune":
        overrides.append("sfprompt.prompts=false")
    exp = load_experiment(toml, overrides)
    run_dir, summary = run_experiment(exp, tmp_path / mode)
    assert summary["status"] == "completed", summary
    arrays = _model_arrays(toml, overrides)
    sizes = sum(a.numpy().nbytes + NPY_HEADER for a in arrays.values())
    rows = _comm(run_dir)
    assert {r["stage"] for r in rows} == {p.STAGE_COLLECT}
    assert sorted(int(r["bytes"]) for r in rows) == [sizes] * 4  # 2 clients, down and up

    train = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[1])
    assert train["scope"] == "train" and (train["clients"], train["failures"]) == (2, 0)
    assert train["num-kept"] == 32 and train["train_loss"] > 0
    if mode == "prompt-tuning":  # prompts + classifier; the encoder's input gradients only
        assert set(arrays.keys()) == {"prompts", "tail.classifier.weight", "tail.classifier.bias"}
        assert train["trainable-params"] == 4 * 384 + 384 * 2 + 2
        assert 0.3 < train["flops-ratio"] < 1
    else:  # every weight: what the reference counts, FLOP for FLOP
        assert train["trainable-params"] == train["full-ft-params"] == 22_565_376 + 384 * 2 + 2
        assert train["flops-ratio"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("split", [(1, 1), (0, 0)])
def test_a_split_round_equals_centralised_sgd_on_the_unsplit_model(toml, tmp_path, backbone, split):
    """One client, no pruning or local-loss update, plain SGD: the global prompts + tail
    after a round of split training (every tensor through messages, the head recomputed)
    are bitwise those of SGD on the unsplit model over the same chunks; at 1/1 and at the
    paper's split (0/0)."""
    head_layers, tail_layers = split
    from fedsim.backends.inprocess import InProcessGrid
    from fedsim.client_app import client_app
    from fedsim.data.federated import federated_image_data
    from fedsim.federation.loop import run_federation
    from fedsim.seeding import derive_seed, purpose
    from fedsim_methods.strategies.sfprompt import initial_arrays

    overrides = [
        "run.rounds=1", "clients.num=1", "clients.per_round=1", "data.max_train_samples=20",
        "sfprompt.prune=false", "sfprompt.local_loss=false", "client.optimizer='sgd'",
        "client.lr=0.5", "client.batch_size=3", "sfprompt.chunk_size=2", "eval.server=false",
        "run.checkpoint_every=0", f"sfprompt.head_layers={head_layers}",
        f"sfprompt.tail_layers={tail_layers}",
    ]  # fmt: skip
    exp = load_experiment(toml, overrides)
    result = run_federation(InProcessGrid(client_app, 1, exp.run.seed), exp, tmp_path / "r")
    split = tensors_of(result.arrays)

    start = tensors_of(initial_arrays(exp))
    reference = copy.deepcopy(backbone)
    blocks = reference.encoder.layer[len(reference.encoder.layer) - tail_layers :]
    blocks.requires_grad_(True)
    prompts = torch.nn.Parameter(start["prompts"].clone())
    classifier = torch.nn.Linear(384, 2)
    with torch.no_grad():
        classifier.weight.copy_(start["tail.classifier.weight"])
        classifier.bias.copy_(start["tail.classifier.bias"])
        for name, param in blocks.named_parameters():
            param.copy_(start[f"tail.blocks.{name}"])
    params = [prompts, *blocks.parameters(), *classifier.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.5)

    x, y = federated_image_data(exp.data, 1, exp.run.seed).client(0)
    seed = derive_seed(exp.run.seed, 1, 0, purpose("sfprompt.split-order"))
    order = epoch_order(torch.arange(len(y)), 1, torch.Generator().manual_seed(seed))
    plan = chunks(len(y), 3, 1, 2)
    assert len(plan) == 4  # 20 samples: micro-batches 3,3 | 3,3 | 3,3 | 2
    for chunk in plan:
        optimizer.zero_grad(set_to_none=True)
        rows = order[chunk.start : chunk.start + chunk.total]
        for part in chunk.micro_batches():
            ids = x[rows[part]]
            embeds = torch.cat([prompts.expand(len(ids), -1, -1),
                                reference.embeddings.word_embeddings(ids)], dim=1)  # fmt: skip
            mask = torch.cat([torch.ones(len(ids), 4, dtype=torch.bool), ids != 0], dim=1)
            hidden = reference(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
            logits = classifier(mean_pool(hidden, mask, 4))
            micro_batch_loss(logits, y[rows[part]], chunk.total).backward()
        optimizer.step()

    assert torch.equal(split["prompts"], prompts.detach())
    assert not torch.equal(split["prompts"], start["prompts"])
    assert torch.equal(split["tail.classifier.weight"], classifier.weight.detach())
    for name, param in blocks.named_parameters():
        assert torch.equal(split[f"tail.blocks.{name}"], param.detach()), name
    assert sum(k.startswith("tail.blocks.") for k in split) == 16 * tail_layers


def test_splitfed_v1_round_equals_centralised_sgd_with_every_layer_trained(
    toml, tmp_path, backbone
):
    """SplitFed-V1 (``train_head`` + ``train_body``), one client, plain SGD: the head's
    embeddings and block, the server's body and the tail after a round are bitwise those of
    SGD on the unsplit model with every weight trainable; the body never leaves the server
    (the model traffic is the client's part only)."""
    from fedsim.backends.inprocess import InProcessGrid
    from fedsim.client_app import client_app
    from fedsim.data.federated import federated_image_data
    from fedsim.federation.loop import run_federation
    from fedsim.seeding import derive_seed, purpose
    from fedsim_methods.strategies.sfprompt import initial_arrays

    overrides = [
        "run.rounds=1", "clients.num=1", "clients.per_round=1", "data.max_train_samples=12",
        "sfprompt.prune=false", "sfprompt.local_loss=false", "sfprompt.prompts=false",
        "sfprompt.train_head=true", "sfprompt.train_body=true", "client.optimizer='sgd'",
        "client.lr=0.1", "client.batch_size=3", "sfprompt.chunk_size=2", "eval.server=false",
        "run.checkpoint_every=0",
    ]  # fmt: skip
    exp = load_experiment(toml, overrides)
    run_dir = tmp_path / "r"
    result = run_federation(InProcessGrid(client_app, 1, exp.run.seed), exp, run_dir)
    split = tensors_of(result.arrays)
    start = tensors_of(initial_arrays(exp))
    body_keys = [k for k in start if k.startswith("body.")]
    assert len(body_keys) == 16 * 4  # blocks 2-5 of MiniLM-L6
    assert all(not torch.equal(split[k], start[k]) for k in body_keys if "LayerNorm" not in k)

    reference = copy.deepcopy(backbone).requires_grad_(True)
    classifier = torch.nn.Linear(384, 2)
    with torch.no_grad():
        classifier.weight.copy_(start["tail.classifier.weight"])
        classifier.bias.copy_(start["tail.classifier.bias"])
    optimizer = torch.optim.SGD([*reference.parameters(), *classifier.parameters()], lr=0.1)
    x, y = federated_image_data(exp.data, 1, exp.run.seed).client(0)
    seed = derive_seed(exp.run.seed, 1, 0, purpose("sfprompt.split-order"))
    order = epoch_order(torch.arange(len(y)), 1, torch.Generator().manual_seed(seed))
    for chunk in chunks(len(y), 3, 1, 2):
        optimizer.zero_grad(set_to_none=True)
        rows = order[chunk.start : chunk.start + chunk.total]
        for part in chunk.micro_batches():
            ids = x[rows[part]]
            hidden = reference(input_ids=ids, attention_mask=ids != 0).last_hidden_state
            logits = classifier(mean_pool(hidden, ids != 0, 0))
            micro_batch_loss(logits, y[rows[part]], chunk.total).backward()
        optimizer.step()

    for name, param in reference.embeddings.named_parameters():
        assert torch.equal(split[f"head.embeddings.{name}"], param.detach()), name
    layers = reference.encoder.layer
    for index, owner in [(0, "head.blocks.0"), (5, "tail.blocks.0")] + [
        (i, f"body.blocks.{i - 1}") for i in range(1, 5)
    ]:
        for name, param in layers[index].named_parameters():
            assert torch.equal(split[f"{owner}.{name}"], param.detach()), f"{owner}.{name}"
    assert torch.equal(split["tail.classifier.weight"], classifier.weight.detach())


def test_splitfed_at_the_paper_split_keeps_the_body_on_the_server(toml, tmp_path):
    """SplitFed-V1 at 0/0: the client's model traffic is its embeddings + classifier only,
    the head gets gradients back, and the server reports the body it trains."""
    from fedsim.runner import run_experiment

    overrides = [
        "run.rounds=1", "sfprompt.prompts=false", "sfprompt.prune=false",
        "sfprompt.local_loss=false", "sfprompt.train_head=true", "sfprompt.train_body=true",
        "sfprompt.head_layers=0", "sfprompt.tail_layers=0",
    ]  # fmt: skip
    run_dir, summary = run_experiment(load_experiment(toml, overrides), tmp_path / "v1")
    assert summary["status"] == "completed", summary
    from fedsim_methods.sfprompt.server_body import cut

    client, _ = cut(_model_arrays(toml, overrides))
    assert set(client.keys()) == {
        *(f"head.embeddings.{k}" for k in ("word_embeddings.weight",
          "position_embeddings.weight", "token_type_embeddings.weight", "LayerNorm.weight",
          "LayerNorm.bias")),
        "tail.classifier.weight", "tail.classifier.bias",
    }  # fmt: skip
    model_bytes = sum(a.numpy().nbytes + NPY_HEADER for a in client.values())
    rows = _comm(run_dir)
    down = [
        int(r["bytes"]) for r in rows if r["stage"] == p.STAGE_PRUNE and r["direction"] == "down"
    ]
    assert down == [model_bytes] * 2
    assert all(int(r["bytes"]) > 0 for r in rows if r["stage"] == p.STAGE_GRADIENTS
               and r["direction"] == "down")  # fmt: skip
    train = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[1])
    assert train["server-trainable-params"] == 6 * 1_774_464
    assert train["trainable-params"] == sum(int(np.prod(a.shape)) for a in client.values())


def test_feature_centre_becomes_the_mean_feature_the_clients_trained_on(toml, tmp_path, backbone):
    """``centre_features``: after a round the global centre is the sample-weighted mean of
    the pooled features the clients trained on. At 0/0 without prompts those are the frozen
    encoder's features, so the centre is their mean over every training snippet."""
    from fedsim.backends.inprocess import InProcessGrid
    from fedsim.client_app import client_app
    from fedsim.data.federated import federated_image_data
    from fedsim.federation.loop import run_federation
    from fedsim_methods.sfprompt.parts import CENTRE

    overrides = [
        "run.rounds=1", "sfprompt.prompts=false", "sfprompt.prune=false",
        "sfprompt.local_loss=false", "sfprompt.head_layers=0", "sfprompt.tail_layers=0",
        "sfprompt.centre_features=true", "eval.server=false", "run.checkpoint_every=0",
        "data.max_train_samples=24",
    ]  # fmt: skip
    exp = load_experiment(toml, overrides)
    result = run_federation(InProcessGrid(client_app, 2, exp.run.seed), exp, tmp_path / "r")
    centre = tensors_of(result.arrays)[CENTRE]
    x = federated_image_data(exp.data, 2, exp.run.seed).x_train
    with torch.no_grad():
        hidden = backbone(input_ids=x, attention_mask=x != 0).last_hidden_state
        expected = mean_pool(hidden, x != 0, 0).double().mean(0).float()
    assert torch.allclose(centre, expected, atol=1e-5), (centre - expected).abs().max()
    assert float(centre.norm()) > 1.0  # the shared component is large


SKEWED = """
method = "sfprompt"
[run]
name = "skewed"
seed = 0
rounds = 8
checkpoint_every = 0
[data]
dataset = "rotten_tomatoes"
partitioner = "dirichlet"
alpha = 0.5
max_train_samples = 2000
max_length = 16
min_partition_size = 10
[client]
local_epochs = 2
batch_size = 16
optimizer = "adamw"
lr = 0.001
[clients]
num = 20
per_round = 5
[eval]
max_samples = 300
batch_size = 300
[sfprompt]
mode = "prompt-tuning"
prompts = false
prune = false
"""


@pytest.mark.slow
def test_feature_centring_prevents_the_collapse_under_label_skew(tmp_path):
    """A linear classifier on frozen MiniLM features, FedAvg over Dirichlet(0.5) clients
    (most hold 80%+ of one class): uncentred, the global model keeps flipping to predicting
    one class; with ``centre_features`` it never does and its balanced accuracy rises."""
    from fedsim.runner import run_experiment

    (tmp_path / "e.toml").write_text(SKEWED)

    def top_shares(centre: bool) -> tuple[list[float], float]:
        exp = load_experiment(
            tmp_path / "e.toml", [f"sfprompt.centre_features={str(centre).lower()}"]
        )
        run_dir, summary = run_experiment(exp, tmp_path / f"centre-{centre}")
        assert summary["status"] == "completed", summary
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in rows if r["scope"] == "server-eval" and r["round"] > 0]
        shares = [max(r["pred-share.0"], r["pred-share.1"]) for r in evals]
        return shares, evals[-1]["balanced-accuracy"]

    plain, _ = top_shares(False)
    centred, balanced = top_shares(True)
    assert sum(share >= 0.9 for share in plain) >= 3, plain  # collapsed rounds
    assert max(centred) < 0.8, centred
    assert balanced > 0.6


# ------------------------------------------------------------------ checks


def test_reply_validator_knows_each_stage_shape():
    from fedsim_methods.strategies.sfprompt import validate_reply

    config = {p.CHUNK: 0, p.SIZES: [4, 2], p.TOKENS: 20, p.HIDDEN: 384}
    sent = Message(RecordDict({"config": ConfigRecord(config)}), 1, p.FORWARD)

    def reply(arrays: dict[str, np.ndarray]) -> Message:
        record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        return Message(RecordDict({p.SPLIT: record}), reply_to=_with_id(sent))

    good = {p.ACTIVATIONS: np.zeros((6, 20, 384), np.float32), p.MASK: np.ones((6, 20), bool)}
    assert validate_reply(p.STAGE_ACTIVATIONS, sent, reply(good)) is None
    short = {**good, p.ACTIVATIONS: np.zeros((5, 20, 384), np.float32)}
    assert "expected float32[6, 20, 384]" in validate_reply(p.STAGE_ACTIVATIONS, sent, reply(short))
    grad = {p.BODY_GRAD: np.zeros((6, 20, 384), np.float64)}
    assert "float64" in validate_reply(p.STAGE_TAIL, sent, reply(grad))
    assert validate_reply(p.STAGE_GRADIENTS, sent, reply(grad)) == "gradients reply: carries arrays"
    no_kept = Message(
        RecordDict({"metrics": MetricRecord({"num-kept": 0})}), reply_to=_with_id(sent)
    )
    assert "num-kept" in validate_reply(p.STAGE_PRUNE, sent, no_kept)


def _with_id(msg: Message) -> Message:
    msg.metadata.__dict__["_message_id"] = "m1"
    return msg


def test_config_rules(toml):
    from fedsim.config import ConfigError

    with pytest.raises(ConfigError, match="fraction_evaluate"):
        load_experiment(toml, ["strategy.fraction_evaluate=0.5"])
    with pytest.raises(ConfigError, match="method 'sfprompt' takes text-classification"):
        load_experiment(toml, ["data.dataset='mnist'", "data.max_length=16"])
