"""Server-side generative distillation: synthesis learns, its gradient modes agree, the
strategy handles partial participation and failures, runs resume to the same bytes after
``kill -9``, and generators plug in by import path and checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, RecordDict
from helpers import rounds_done, stub_context, wait_for_rounds

from fedsim.config import ConfigError, load_experiment
from fedsim.config.schema import DataConfig, ModelConfig
from fedsim.data.federated import federated_image_data
from fedsim.models import build_model
from fedsim.runner import resume_run, run_experiment
from fedsim.training import evaluate
from fedsim_methods.distillation.config import DistillationConfig
from fedsim_methods.distillation.generators import GeneratorError, PixelSpace, custom_generator
from fedsim_methods.distillation.synthesis import synthesise

TESTS = Path(__file__).parent

DISTIL = """
method = "distillation"
[run]
name = "distil"
seed = 0
rounds = 3
checkpoint_every = 1
[data]
dataset = "mnist"
partitioner = "dirichlet"
alpha = 0.5
max_train_samples = 2000
min_partition_size = 10
[model]
name = "convnet"
width = 8
depth = 2
[client]
local_epochs = 2
batch_size = 32
optimizer = "sgd"
lr = 0.05
momentum = 0.0
[clients]
num = 4
per_round = 3
[eval]
max_samples = 1000
[distillation]
ipc = 2
syn_steps = 3
iterations = 5
global_epochs = 30
global_lr = 0.05
server_model_width = 4
server_epochs = 3
"""


@pytest.fixture(scope="module")
def mnist():
    return federated_image_data(DataConfig(dataset="mnist", partitioner="iid"), 10, 0)


def _trained_client(mnist, epochs: int, n: int = 3000, width: int = 16, lr: float = 0.01):
    """(model, start weights, trained weights): a client that learned MNIST well."""
    x, y = mnist.client(0)
    x, y = x[:n], y[:n]
    spec = ModelConfig(name="convnet", width=width, depth=3)
    model = build_model(spec, mnist.input_shape, 10, 0)
    start = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model, start, [p.detach().clone() for p in model.parameters()]


def test_first_order_gradient_equals_unrolled_for_one_step(mnist):
    """With one inner step nothing is dropped: the memory-flat gradient is the exact one."""
    model, start, target = _trained_client(mnist, 0, n=64, width=4)
    noise = torch.Generator().manual_seed(11)  # not the global RNG: test order must not matter
    target = [p + 0.01 * torch.randn(p.shape, generator=noise) for p in start]
    labels = torch.arange(10).repeat_interleave(2)
    results = {}
    for mode in ("first_order", "unrolled"):
        cfg = DistillationConfig(ipc=2, syn_steps=1, iterations=1, gradient=mode)
        gen = torch.Generator().manual_seed(3)
        # One iteration moves the images once: equal moves mean equal gradients.
        results[mode] = synthesise(model, start, target, labels, PixelSpace((1, 28, 28)), cfg, gen)
    a, b = results["first_order"], results["unrolled"]
    assert torch.allclose(a.images, b.images, atol=1e-5, rtol=1e-4)
    assert a.syn_lr == pytest.approx(b.syn_lr, rel=1e-5)
    assert not torch.equal(a.images, PixelSpace((1, 28, 28)).init_latents(
        labels, torch.Generator().manual_seed(3)))  # fmt: skip


def test_kept_step_graphs_give_the_replayed_gradient(mnist):
    """step_graphs = "keep" takes pass 2's graphs from pass 1 instead of replaying each step:
    the same first-order gradient, up to the rounding of torch's differentiable backward."""
    model, start, _ = _trained_client(mnist, 0, n=64, width=4)
    noise = torch.Generator().manual_seed(11)  # not the global RNG: test order must not matter
    target = [p + 0.01 * torch.randn(p.shape, generator=noise) for p in start]
    labels = torch.arange(10).repeat_interleave(2)
    results = {}
    for graphs in ("replay", "keep"):
        cfg = DistillationConfig(ipc=2, syn_steps=4, iterations=2, step_graphs=graphs)
        gen = torch.Generator().manual_seed(3)
        results[graphs] = synthesise(
            model, start, target, labels, PixelSpace((1, 28, 28)), cfg, gen
        )
    a, b = results["replay"], results["keep"]
    assert torch.allclose(a.images, b.images, atol=1e-5, rtol=1e-4)
    assert a.losses == pytest.approx(b.losses, rel=1e-5)
    assert a.syn_lr == pytest.approx(b.syn_lr, rel=1e-5)


def test_matching_loss_falls_and_synthetic_data_teaches_a_fresh_model(mnist):
    model, start, target = _trained_client(mnist, epochs=2, n=2000, width=8, lr=0.05)
    labels = torch.arange(10).repeat_interleave(5)
    cfg = DistillationConfig(ipc=5, syn_steps=5, iterations=15, syn_lr=0.05)
    result = synthesise(
        model, start, target, labels, PixelSpace((1, 28, 28)), cfg, torch.Generator().manual_seed(1)
    )
    assert result.losses[-1] < 0.9 * result.losses[0]
    assert result.images.shape == (50, 1, 28, 28) and torch.equal(result.labels, labels)

    from fedsim_methods.distillation.server_training import train_on_synthetic

    fresh = build_model(ModelConfig(name="convnet", width=8, depth=3), (1, 28, 28), 10, 0)
    train_on_synthetic(
        fresh, result.images, result.labels, epochs=60, lr=0.05, batch_size=256,
        ops=cfg.augmentations(), gen=torch.Generator().manual_seed(2),
    )  # fmt: skip
    held_out = evaluate(fresh, mnist.x_test[:2000], mnist.y_test[:2000], 500, torch.device("cpu"))
    # Chance is 0.10; 50 synthetic images, 15 iterations from noise (measured 0.28-0.30,
    # the client itself 0.76).
    assert held_out["accuracy"] > 0.2


def _respond_with_real_clients(exp, fail: set[int]):
    from fedsim_methods.clients.distillation import train

    contexts = {}

    def respond(pid, msg):
        if pid in fail:
            raise RuntimeError(f"client {pid} crashed")
        context = contexts.setdefault(
            pid, Context(1, 1000 + pid, {"partition-id": pid}, RecordDict(), {})
        )
        return train(msg, context, exp)

    return respond


def test_partial_participation_and_a_failed_client(tmp_path):
    from fedsim_methods.strategies.distillation import build_strategy
    from fedsim_methods.strategies.supervised import initial_arrays

    (tmp_path / "d.toml").write_text(DISTIL)
    exp = load_experiment(tmp_path / "d.toml", ["clients.num=5", "clients.per_round=3"])
    data = federated_image_data(exp.data, exp.clients.num, exp.run.seed)
    ctx = stub_context(5, _respond_with_real_clients(exp, fail={1, 3}))
    strategy = build_strategy(exp)
    strategy.bind(ctx)
    arrays = initial_arrays(exp)
    for server_round in (1, 2):
        ctx.begin_round(server_round)
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), ctx.grid))
        sampled = sorted(ctx.partition_of(m.metadata.dst_node_id) for m in messages)
        replies = ctx.exchange(messages, stage="train")
        new, metrics = strategy.aggregate_train(server_round, replies)
        ok = [p for p in sampled if p not in {1, 3}]
        assert [c.partition_id for c in strategy.last.clients] == ok
        for c in strategy.last.clients:  # only the classes that client holds, ipc each
            held = set(data.client(c.partition_id)[1].tolist())
            assert set(c.labels.tolist()) == held and len(c.labels) == 2 * len(held)
        if ok:
            assert new is not None and metrics["synthetic_images"] == sum(
                len(c.labels) for c in strategy.last.clients
            )
            assert any(
                not np.array_equal(a.numpy(), b.numpy())
                for a, b in zip(new.values(), arrays.values())
            )
            arrays = new
        assert {f.partition_id for f in ctx.round_failures()} == {1, 3} & set(sampled)


def test_a_run_learns_and_saves_its_synthetic_sets(tmp_path):
    (tmp_path / "d.toml").write_text(DISTIL)
    exp = load_experiment(tmp_path / "d.toml")
    reference, summary = run_experiment(exp, tmp_path / "reference")
    rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["scope"] == "server-eval"]
    assert evals[-1]["accuracy"] > evals[0]["accuracy"] + 0.1
    assert len([r for r in rows if r["scope"] == "server-model"]) == 3
    for r in (1, 2, 3):
        saved = torch.load(reference / "synthetic" / f"round-{r:06d}.pt")
        assert saved["images"].shape[0] == len(saved["labels"]) == len(saved["partition_ids"])
        assert (reference / "plots" / f"synthetic-round-{r:06d}.png").stat().st_size > 0
    comm = (reference / "comm.csv").read_text().splitlines()[1:]
    up = {int(line.split(",")[-1]) for line in comm if ",up," in line}
    down = {int(line.split(",")[-1]) for line in comm if ",down," in line}
    assert up == down and len(up) == 1  # weights only, both ways: FedAvg's traffic


@pytest.mark.slow  # two full runs, one in a subprocess; the fast suite keeps the one above
def test_a_run_killed_with_sigkill_resumes_to_the_same_bytes(tmp_path):
    (tmp_path / "d.toml").write_text(DISTIL)
    reference, _ = run_experiment(load_experiment(tmp_path / "d.toml"), tmp_path / "reference")
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsim", "run", str(tmp_path / "d.toml"), "--out", str(killed)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_for_rounds(proc, killed, 1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert rounds_done(killed) < 3, "killed before the end"
    resume_run(killed)
    for name in ("metrics.jsonl", "comm.csv"):
        assert (killed / name).read_bytes() == (reference / name).read_bytes()
    rounds = [line.split(",")[0] for line in (killed / "synthesis.csv").read_text().split()[1:]]
    assert rounds == sorted(rounds) and len(rounds) == 9  # 3 rounds x 3 clients, none twice


@pytest.mark.slow
def test_worker_processes_synthesise_the_same_bytes(tmp_path):
    """synthesis_workers = 2 spawns processes for a round's clients: same sets, same run."""
    (tmp_path / "d.toml").write_text(DISTIL)
    runs = {}
    for workers in (1, 2):
        exp = load_experiment(
            tmp_path / "d.toml",
            ["run.rounds=2", f"distillation.synthesis_workers={workers}"],
        )
        runs[workers], _ = run_experiment(exp, tmp_path / f"workers{workers}")
    one, two = runs[1], runs[2]
    assert (one / "metrics.jsonl").read_bytes() == (two / "metrics.jsonl").read_bytes()
    for r in (1, 2):
        a = torch.load(one / "synthetic" / f"round-{r:06d}.pt")
        b = torch.load(two / "synthetic" / f"round-{r:06d}.pt")
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
    rows = [line.split(",") for line in (two / "synthesis.csv").read_text().split()[1:]]
    assert [(r[0], r[1]) for r in rows] == sorted((r[0], r[1]) for r in rows)  # partition order


def test_a_custom_generator_plugs_in_by_import_path_and_checkpoint(tmp_path, mnist):
    torch.manual_seed(0)  # the plug-in's init and the target: not whatever ran before
    sys.path.insert(0, str(TESTS))
    try:
        gen_module = custom_generator("toy_generators:build", "", 10, (1, 28, 28))
        torch.save({k: v + 1 for k, v in gen_module.state_dict().items()}, tmp_path / "g.pt")
        loaded = custom_generator("toy_generators:build", str(tmp_path / "g.pt"), 10, (1, 28, 28))
        first = next(iter(loaded.state_dict().values()))
        assert torch.equal(first, next(iter(gen_module.state_dict().values())) + 1)
        assert not any(p.requires_grad for p in loaded.parameters())  # frozen

        model, start, target = _trained_client(mnist, 0, n=64, width=4)
        noise = torch.Generator().manual_seed(11)
        target = [p + 0.01 * torch.randn(p.shape, generator=noise) for p in start]
        labels = torch.tensor([0, 0, 3, 3])
        cfg = DistillationConfig(
            ipc=2, syn_steps=2, iterations=3, generator="custom",
            generator_module="toy_generators:build", generator_checkpoint=str(tmp_path / "g.pt"),
        )  # fmt: skip
        out = synthesise(model, start, target, labels, loaded, cfg, torch.Generator())
        assert out.images.shape == (4, 1, 28, 28) and 0 <= out.images.min() <= out.images.max() <= 1
        assert out.losses[-1] < out.losses[0]  # the latents moved, through the generator

        with pytest.raises(GeneratorError, match="generator_module: cannot import"):
            custom_generator("toy_generators:missing", "", 10, (1, 28, 28))
        with pytest.raises(GeneratorError, match="not a torch.nn.Module"):
            custom_generator("toy_generators:not_a_module", "", 10, (1, 28, 28))
        with pytest.raises(GeneratorError, match="has no latent_shape"):
            custom_generator("toy_generators:no_latent_shape", "", 10, (1, 28, 28))
        with pytest.raises(
            GeneratorError,
            match=r"generator_module: cannot import "
            r"'toy_generators.broken:build' \(RuntimeError: this module is",
        ):
            custom_generator("toy_generators.broken:build", "", 10, (1, 28, 28))
        with pytest.raises(GeneratorError, match="raised ZeroDivisionError: the factory's own"):
            custom_generator("toy_generators:raises", "", 10, (1, 28, 28))
        (tmp_path / "garbage.pt").write_bytes(b"\x00garbage" * 100)
        with pytest.raises(GeneratorError, match="garbage.pt is not a state dict") as err:
            custom_generator("toy_generators:build", str(tmp_path / "garbage.pt"), 10, (1, 28, 28))
        assert "weights_only" not in str(err.value)  # torch's unsafe advice is not passed on
        torch.save({"nope": torch.zeros(1)}, tmp_path / "bad.pt")
        with pytest.raises(GeneratorError, match="generator_checkpoint: .*bad.pt does not fit"):
            custom_generator("toy_generators:build", str(tmp_path / "bad.pt"), 10, (1, 28, 28))
    finally:
        sys.path.remove(str(TESTS))


def test_loading_a_pretrained_generator_config_trains_nothing(tmp_path, monkeypatch):
    """A config loads in well under a second (a sweep validates every cell before it runs);
    the generator is trained by the run or ``fedsim distill-generator``, not by loading."""
    from fedsim_methods.distillation import pretrain

    trained: list[int] = []
    monkeypatch.setattr(pretrain, "pretrained_generator", lambda *a, **k: trained.append(1))
    (tmp_path / "d.toml").write_text(DISTIL)
    pretrained = ["distillation.generator='pretrained'", "run.seed=4321"]
    exp = load_experiment(tmp_path / "d.toml", [*pretrained, "data.server_share=0.1"])
    assert exp.section("distillation").generator == "pretrained" and trained == []


def test_the_pretrained_generator_is_trained_once_on_server_data_and_cached(tmp_path):
    from fedsim_methods.distillation.pretrain import pretrained_generator

    (tmp_path / "d.toml").write_text(DISTIL)
    overrides = [
        "data.server_share=0.1", "distillation.generator='pretrained'",
        "distillation.generator_epochs=2", "distillation.latent_dim=8", "run.seed=12345",
    ]  # fmt: skip
    exp = load_experiment(tmp_path / "d.toml", overrides)
    epochs: list[int] = []
    first, path = pretrained_generator(exp, exp.section("distillation"), force=True,
                                       progress=lambda e, loss: epochs.append(e))  # fmt: skip
    assert epochs == [1, 2] and path.exists()
    again, same = pretrained_generator(
        exp, exp.section("distillation"), progress=lambda e, loss: epochs.append(e)
    )
    assert same == path and epochs == [1, 2]  # loaded from the cache, not trained again
    images = again(torch.randn(4, 8), torch.tensor([0, 1, 2, 3]))
    assert images.shape == (4, 1, 28, 28)

    data = federated_image_data(exp.data, exp.clients.num, exp.run.seed)
    assert len(data.y_server) == 200 and len(data.y_train) == 1800  # 10% of 2000 held back

    with pytest.raises(ConfigError, match="data.server_share: distillation.generator"):
        load_experiment(tmp_path / "d.toml", ["distillation.generator='pretrained'"])


def test_bad_distillation_settings_are_refused_with_the_key(tmp_path):
    (tmp_path / "d.toml").write_text(DISTIL)
    with pytest.raises(ConfigError, match="augment: unknown"):
        load_experiment(tmp_path / "d.toml", ["distillation.augment='flip_blur'"])
    with pytest.raises(ConfigError, match="synthesis_workers: worker processes synthesise on"):
        load_experiment(tmp_path / "d.toml", ["distillation.synthesis_workers=2",
                                               "distillation.server_device='cuda'"])  # fmt: skip
    with pytest.raises(ConfigError, match="generator_module: generator = 'custom' needs"):
        load_experiment(tmp_path / "d.toml", ["distillation.generator='custom'"])
    with pytest.raises(ConfigError, match="method 'distillation' takes image-classification"):
        load_experiment(tmp_path / "d.toml", ["data.dataset='rotten_tomatoes'",
                                               "model.name='bag_of_embeddings'"])  # fmt: skip
