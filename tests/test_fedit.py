"""FedIT: adapters on the wire, aggregation maths, data splits, config rules, end to end.

A tiny randomly initialised Llama (2 layers, hidden 64) with the real SmolLM2 tokenizer
(from the fetched asset folder) stands in for the LM, so everything runs in seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from helpers import stub_context
from typer.testing import CliRunner

from fedsim.config import ConfigError, load_experiment
from fedsim.federation.replies import array_bytes
from fedsim_methods.fedit.adapter import (
    adapter_arrays,
    adapter_state,
    from_arrays,
    is_residual,
    key_a,
    key_b,
    key_residual,
    load_global,
    to_arrays,
)
from fedsim_methods.fedit.config import FedITConfig
from fedsim_methods.fedit.instructions import category_dirichlet, category_shards, heldout_split
from fedsim_methods.fedit.prompts import IGNORE, encode, fit
from fedsim_methods.strategies.fedit import aggregate_adapters, averaging_error, effective_delta

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# On a random 2-layer model, adapters on q/v alone barely move the output; adapters that
# write into the residual stream (o_proj, down_proj) show learning within a few steps.
LEARNING_TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random 2-layer Llama saved as a local HF folder with SmolLM2's real tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from fedsim.assets import fetch

    src = fetch("smollm2-135m-instruct")
    out = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(src / name, out / name)
    return out


def write_toml(path: Path, model: Path, **sections: dict) -> Path:
    """A small fedit experiment on chatterbot; ``sections`` override keys per section."""
    base = {
        "run": {"name": "fedit-tiny", "seed": 0, "rounds": 2, "checkpoint_every": 1},
        "data": {"dataset": "chatterbot"},
        "client": {"optimizer": "adamw", "lr": 0.01, "local_epochs": 1},
        "clients": {"num": 3, "per_round": 2},
        "lora": {"r": 4, "alpha": 8.0, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
        "fedit": {
            "base_model": str(model),
            "max_length": 48,
            "micro_batch_size": 4,
            "gradient_accumulation": 2,
            "max_steps": 3,
            "heldout_per_category": 1,
            "eval_generate_per_category": 1,
            "eval_max_new_tokens": 4,
            "eval_batch_size": 32,
        },
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    import tomli_w

    text = 'method = "fedit"\n' + tomli_w.dumps(base)
    path.write_text(text)
    return path


@pytest.fixture
def tiny_exp(tiny_model, tmp_path):
    def make(**sections):
        return load_experiment(write_toml(tmp_path / "fedit.toml", tiny_model, **sections))

    return make


# ------------------------------------------------------------------------ adapters


def test_adapter_round_trips_through_arrayrecord_exactly(tiny_exp):
    import fedsim_methods.fedit.cache as cache

    exp = tiny_exp()
    lm = cache.lm_of(exp)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in adapter_state(lm).values():
            p.copy_(torch.randn(p.shape, generator=gen))
    sent = {k: v.detach().clone() for k, v in adapter_state(lm).items()}
    arrays = adapter_arrays(lm, "fp32")
    assert all(a.dtype == "float32" for a in arrays.values())
    with torch.no_grad():
        for p in adapter_state(lm).values():
            p.zero_()
    load_global(lm, arrays)
    for key, value in adapter_state(lm).items():
        assert torch.equal(value, sent[key]), key

    half = adapter_arrays(lm, "fp16")  # the wire dtype; fp16 values come back unchanged
    assert all(a.dtype == "float16" for a in half.values())
    load_global(lm, half)
    for key, value in adapter_state(lm).items():
        assert torch.equal(value, sent[key].half().float()), key
    nbytes = [sum(a.numpy().nbytes for a in rec.values()) for rec in (half, arrays)]
    assert nbytes[0] * 2 == nbytes[1]


def test_only_adapter_tensors_travel(tiny_exp):
    import fedsim_methods.fedit.cache as cache

    exp = tiny_exp()
    lm = cache.lm_of(exp)
    arrays = adapter_arrays(lm)
    n_params = sum(p.numel() for p in lm.model.parameters())
    n_adapter = sum(p.numel() for p in lm.model.parameters() if p.requires_grad)
    assert set(arrays) == set(adapter_state(lm))
    assert all(".lora_A." in k or ".lora_B." in k for k in arrays)
    assert sum(int(np.prod(a.shape)) for a in arrays.values()) == n_adapter < n_params / 100
    # 2 layers x (q_proj 64->64, v_proj 64->32) at r = 4
    assert n_adapter == 2 * (4 * (64 + 64) + 4 * (64 + 32))


# ---------------------------------------------------------------------- aggregation


def _client_states(rng, modules, r=3, d_out=6, d_in=5, k=3):
    return [
        {
            **{key_a(m): rng.standard_normal((r, d_in)).astype(np.float32) for m in modules},
            **{key_b(m): rng.standard_normal((d_out, r)).astype(np.float32) for m in modules},
        }
        for _ in range(k)
    ]


def test_fedavg_aggregation_averages_a_and_b_separately():
    rng = np.random.default_rng(0)
    states = _client_states(rng, ["m0", "m1"])
    n = np.array([10.0, 30.0, 60.0])
    adapter, residuals = aggregate_adapters(states, n, "fedavg", scaling=2.0)
    w = n / n.sum()
    for key in adapter:
        ref = sum(wi * s[key].astype(np.float64) for wi, s in zip(w, states))
        np.testing.assert_allclose(adapter[key], ref, rtol=1e-6, atol=1e-6)
    assert residuals == {}
    # ... which is not the mean update: mean(B) @ mean(A) != mean(B @ A)
    prod = sum(wi * s[key_b("m0")] @ s[key_a("m0")] for wi, s in zip(w, states))
    assert not np.allclose(adapter[key_b("m0")] @ adapter[key_a("m0")], prod, atol=1e-3)


def test_exact_aggregation_reproduces_weighted_mean_of_products():
    rng = np.random.default_rng(1)
    scaling = 2.5
    states = _client_states(rng, ["m0", "m1"])
    n = np.array([5.0, 1.0, 14.0])
    current = {
        key_residual(m): rng.standard_normal((6, 5)).astype(np.float32) for m in ["m0", "m1"]
    }
    adapter, residuals = aggregate_adapters(states, n, "exact", scaling, current)
    new = {**adapter, **residuals}
    w = n / n.sum()
    for m in ["m0", "m1"]:
        # every client's model is W0 + residual + s B_k A_k; the global must be their mean
        ref = current[key_residual(m)] + scaling * sum(
            wi * s[key_b(m)].astype(np.float64) @ s[key_a(m)] for wi, s in zip(w, states)
        )
        np.testing.assert_allclose(effective_delta(new, m, scaling), ref, rtol=1e-5, atol=1e-5)
        # and the adapter itself is FedAvg's, so training continues from it
        ref_a = sum(wi * s[key_a(m)].astype(np.float64) for wi, s in zip(w, states))
        np.testing.assert_allclose(adapter[key_a(m)], ref_a, rtol=1e-6, atol=1e-6)


def test_svd_aggregation_is_best_rank_r_approximation():
    rng = np.random.default_rng(2)
    states = _client_states(rng, ["m0"], r=2, d_out=7, d_in=6, k=3)
    n = np.array([1.0, 2.0, 3.0])
    adapter, _ = aggregate_adapters(states, n, "svd", scaling=2.0)
    w = n / n.sum()
    target = sum(
        wi * s[key_b("m0")].astype(np.float64) @ s[key_a("m0")] for wi, s in zip(w, states)
    )
    u, s, vt = np.linalg.svd(target)
    ref = (u[:, :2] * s[:2]) @ vt[:2]  # Eckart-Young
    got = adapter[key_b("m0")].astype(np.float64) @ adapter[key_a("m0")]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    a = adapter[key_a("m0")].astype(np.float64)
    np.testing.assert_allclose(a @ a.T, np.eye(2), atol=1e-5)  # A = V_r^T: orthonormal rows
    assert adapter[key_a("m0")].shape == (2, 6) and adapter[key_b("m0")].shape == (7, 2)


def _grid(num: int):
    """The Grid a strategy sees in fedsim's loop, over scripted nodes (no client runs)."""
    return stub_context(num).grid


def _replies(messages, states, sizes):
    return [
        Message(
            RecordDict(
                {
                    "arrays": to_arrays(state),
                    "metrics": MetricRecord({"num-examples": size, "train_loss": 1.0 + i}),
                }
            ),
            reply_to=msg,
        )
        for i, (msg, state, size) in enumerate(zip(messages, states, sizes))
    ]


@pytest.mark.parametrize("mode", ["fedavg", "exact", "svd"])
def test_strategy_aggregates_replies_as_the_reference(tiny_exp, mode):
    from fedsim_methods.strategies.fedit import build_strategy

    exp = tiny_exp(clients={"num": 4, "per_round": 3}, fedit={"aggregation": mode})
    import fedsim_methods.strategies.fedit.server as fedit_server

    strategy = build_strategy(exp)
    arrays = fedit_server.initial_arrays(exp)
    assert any(is_residual(k) for k in arrays) == (mode == "exact")
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), _grid(4)))
    assert len(messages) == 3  # per_round / num of the clients: the fraction is honoured
    rng = np.random.default_rng(3)
    states = [
        {
            k: rng.standard_normal(a.shape).astype(np.float32)
            for k, a in from_arrays(arrays).items()
            if not is_residual(k)
        }
        for _ in messages
    ]
    sizes = [7, 11, 2]
    new, metrics = strategy.aggregate_train(1, _replies(messages, states, sizes))
    ref, res = aggregate_adapters(
        states, np.array(sizes, float), mode, exp.lora.scaling, from_arrays(arrays)
    )
    got = from_arrays(new)
    assert set(got) == set(ref) | set(res)
    for key, value in {**ref, **res}.items():
        np.testing.assert_array_equal(got[key], value)
    assert metrics["train_loss"] == pytest.approx((7 * 1 + 11 * 2 + 2 * 3) / 20)


@pytest.mark.parametrize("mode", ["fedavg", "exact"])
def test_fedadam_steps_over_the_adapter_and_passes_residuals(tiny_exp, mode):
    from fedsim_methods.strategies.fedit import FedITAdam, build_strategy

    exp = tiny_exp(
        clients={"num": 3, "per_round": 2},
        strategy={"name": "fedadam"},
        fedopt={"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
        fedit={"aggregation": mode},
    )
    import fedsim_methods.strategies.fedit.server as fedit_server

    strategy = build_strategy(exp)
    assert isinstance(strategy, FedITAdam)
    arrays = fedit_server.initial_arrays(exp)
    current = from_arrays(arrays)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), _grid(3)))
    rng = np.random.default_rng(4)
    states = [
        {
            k: rng.standard_normal(v.shape).astype(np.float32)
            for k, v in current.items()
            if not is_residual(k)
        }
        for _ in messages
    ]
    new, _ = strategy.aggregate_train(1, _replies(messages, states, [3, 1]))
    got = from_arrays(new)
    mean, res = aggregate_adapters(states, np.array([3.0, 1.0]), mode, exp.lora.scaling, current)
    eta_norm = 0.01 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)  # Flower's bias correction, round 1
    for key, value in mean.items():
        delta = value.astype(np.float64) - current[key]
        m, v = 0.1 * delta, 0.01 * delta**2
        ref = current[key] + eta_norm * m / (np.sqrt(v) + 1e-3)
        np.testing.assert_allclose(got[key], ref, rtol=1e-5, atol=1e-6)
    for key, value in res.items():  # the exact correction is not rescaled by Adam
        np.testing.assert_array_equal(got[key], value)
    assert set(got) == set(current)


# ----------------------------------------------------------------------- data splits


def test_heldout_set_is_fixed_per_category_and_never_trained_on():
    cats = np.array(["a"] * 30 + ["b"] * 5 + ["c"] * 1)
    train, test = heldout_split(cats, 10, seed=0)
    assert np.intersect1d(train, test).size == 0 and len(train) + len(test) == 36
    counts = {c: int((cats[test] == c).sum()) for c in "abc"}
    assert counts == {"a": 10, "b": 2, "c": 0}  # at most half of a category
    np.testing.assert_array_equal(test, heldout_split(cats, 10, seed=0)[1])


def test_category_shards_give_each_client_few_categories():
    cat_ids = np.repeat(np.arange(10), 20)  # 10 categories x 20 records
    parts = category_shards(cat_ids, 10, 2, np.random.default_rng(0))
    assert sorted(np.concatenate(parts).tolist()) == list(range(200))
    assert all(len(np.unique(cat_ids[p])) <= 2 for p in parts)
    assert [len(p) for p in parts] == [20] * 10


def test_category_dirichlet_meets_the_minimum_size():
    cat_ids = np.repeat(np.arange(8), 50)
    parts = category_dirichlet(cat_ids, 10, 0.5, 15, np.random.default_rng(0))
    assert min(len(p) for p in parts) >= 15
    assert sorted(np.concatenate(parts).tolist()) == list(range(400))
    with pytest.raises(ValueError, match="fedit.min_records_per_client"):
        category_dirichlet(cat_ids, 10, 0.5, 41, np.random.default_rng(0))


def test_clients_never_hold_heldout_records(tiny_exp):
    import fedsim_methods.fedit.cache as cache

    data = cache.data_of(tiny_exp(clients={"num": 5, "per_round": 2}))
    test = {(r.category, r.instruction, r.output) for r in data.test}
    for pid in range(5):
        assert not test & {(r.category, r.instruction, r.output) for r in data.client(pid)}
    assert sum(len(data.client(pid)) for pid in range(5)) == len(data.train)


# -------------------------------------------------------------------------- prompts


def test_prompt_masks_the_prompt_and_appends_eos(tiny_exp):
    import fedsim_methods.fedit.cache as cache
    from fedsim.data.sources import InstructionRecord

    tok = cache.lm_of(tiny_exp()).tokenizer
    rec = InstructionRecord("c", "Say hi", "", "Hello there", "test")
    full = encode(rec, tok, "alpaca", 256, "all")
    resp = encode(rec, tok, "alpaca", 256, "response")
    assert full.input_ids == resp.input_ids and full.input_ids[-1] == tok.eos_token_id
    n_resp = len(tok("Hello there", add_special_tokens=False)["input_ids"]) + 1
    assert resp.labels[-n_resp:] == resp.input_ids[-n_resp:]
    assert set(resp.labels[:-n_resp]) == {IGNORE}
    assert full.labels == full.input_ids
    assert "### Response:" in tok.decode(list(full.input_ids))
    chat = encode(rec, tok, "chat", 256, "response")
    assert "<|im_start|>assistant" in tok.decode(list(chat.input_ids))
    assert fit(list(range(100)), [7, 8, 9], 20) == (list(range(83, 100)), [7, 8, 9])
    assert fit(list(range(100)), list(range(50)), 20) == (list(range(90, 100)), list(range(10)))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"lora": {"r": 0}}, "lora.r: Input should be greater than 0"),
        ({"lora": {"target_modules": ["qq_proj"]}}, "lora.target_modules: 'qq_proj' matches no"),
        ({"strategy": {"name": "fedprox"}}, "strategy.name: fedit composes with"),
        (
            {"strategy": {"name": "fedyogi"}, "fedit": {"aggregation": "svd"}},
            "fedit.aggregation: 'svd' does not compose",
        ),
        ({"fedit": {"train_clients": [7]}}, "fedit.train_clients: partition id 7"),
        (
            {"fedit": {"base_model": "no-such-model"}},
            "fedit.base_model: 'no-such-model' is neither",
        ),
        ({"fedit": {"adapter_dtype": "bf16"}}, "fedit.adapter_dtype"),
        ({"data": {"partitioner": "dirichlet"}}, "data.partitioner: fedit splits"),
    ],
)
def test_bad_fedit_configs_name_their_key(tiny_model, tmp_path, override, message):
    path = write_toml(tmp_path / "bad.toml", tiny_model, **override)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as err:
        load_experiment(path)
    assert str(err.value).startswith(str(path))


def test_lora_section_on_another_method_is_an_error(tiny_toml):
    with pytest.raises(ConfigError, match="lora: method 'fedavg' ignores a \\[lora\\] section"):
        load_experiment(tiny_toml, ["lora.r=4"])


def test_default_fedit_config_is_valid():
    assert FedITConfig().base_model == "smollm2-135m-instruct"


# ----------------------------------------------------------------------- end to end


def _rows(run_dir: Path, scope: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["scope"] == scope]


def _comm(run_dir: Path) -> list[list[str]]:
    return [ln.split(",") for ln in (run_dir / "comm.csv").read_text().splitlines()[1:]]


@pytest.mark.slow
def test_fedit_run_learns_is_repeatable_and_saves_a_peft_adapter(tiny_exp, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import fedsim_methods.fedit.cache as cache
    from fedsim.cli import app
    from fedsim.runner import run_experiment

    exp = tiny_exp(
        run={"rounds": 3}, lora={"target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"]}
    )
    first, summary = run_experiment(exp, tmp_path / "a")
    second, _ = run_experiment(exp, tmp_path / "b")
    assert summary["status"] == "completed"
    text = (first / "metrics.jsonl").read_text()
    assert text == (second / "metrics.jsonl").read_text()  # bitwise repeatable

    evals = _rows(first, "server-eval")
    assert [r["round"] for r in evals] == [0, 1, 2, 3]
    assert evals[-1]["loss"] < evals[0]["loss"] - 0.05  # held-out loss falls
    assert "rouge_l" in evals[0] and "exact_match/ai" in evals[-1]

    lm = cache.lm_of(exp)
    adapter_bytes = array_bytes(RecordDict({"arrays": adapter_arrays(lm)}))
    rows = _comm(first)
    assert rows and all(int(b) == adapter_bytes for _, _, _, _, b in rows)  # adapter only

    # the saved adapter is the final global one, and loads back with plain peft
    from fedsim.checkpoint import load_checkpoint
    from fedsim_methods.fedit.generate import answer

    final = load_checkpoint(first).arrays
    base = AutoModelForCausalLM.from_pretrained(exp.fedit.base_model, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, str(first / "adapter")).eval()
    load_global(lm, final)
    x = torch.tensor([[1, 200, 300, 400, 500]])
    with torch.no_grad():
        np.testing.assert_allclose(
            tuned(input_ids=x).logits.numpy(), lm.model(input_ids=x).logits.numpy(), atol=1e-5
        )

    result = CliRunner().invoke(
        app, ["generate", str(first), "--prompt", "Tell me a joke", "--max-new-tokens", "6"]
    )
    assert result.exit_code == 0, result.output
    expected = answer(first, ["Tell me a joke"], max_new_tokens=6)[0]
    assert result.output.rstrip("\n") == expected


@pytest.mark.slow
def test_exact_fp16_run_sends_residual_down_and_adapter_up(tiny_exp, tmp_path):
    import fedsim_methods.fedit.cache as cache
    import fedsim_methods.strategies.fedit.server as fedit_server
    from fedsim.runner import run_experiment

    exp = tiny_exp(
        fedit={"aggregation": "exact", "adapter_dtype": "fp16", "eval_generate_every": 0},
        strategy={"name": "fedadam"},
        fedopt={"eta": 0.003},
        lora={"target_modules": LEARNING_TARGETS},
    )
    run_dir, summary = run_experiment(exp, tmp_path / "exact")
    assert summary["status"] == "completed"
    up = to_arrays(from_arrays(adapter_arrays(cache.lm_of(exp))), "fp16")
    down = to_arrays(from_arrays(fedit_server.initial_arrays(exp)), "fp16")  # adapter + residual
    assert any(is_residual(k) for k in down) and not any(is_residual(k) for k in up)
    expected = {
        "up": array_bytes(RecordDict({"arrays": up})),
        "down": array_bytes(RecordDict({"arrays": down})),
    }
    rows = _comm(run_dir)
    assert rows and all(int(nbytes) == expected[d] for _, _, _, d, nbytes in rows)
    assert (run_dir / "adapter" / "fedsim_residual.safetensors").is_file()
    evals = _rows(run_dir, "server-eval")
    assert evals[-1]["loss"] < evals[0]["loss"]
    assert "rouge_l" not in evals[-1]  # generation off


def test_local_only_run_trains_the_listed_client(tiny_exp, tmp_path):
    from fedsim.runner import run_experiment

    exp = tiny_exp(
        run={"rounds": 1, "checkpoint_every": 0},
        fedit={
            "train_clients": [2],
            "eval_generate_every": 0,
            "save_adapter": False,
            "eval_at_start": False,
        },
    )
    run_dir, _ = run_experiment(exp, tmp_path / "local")
    assert {int(r[2]) for r in _comm(run_dir)} == {2}
    assert not (run_dir / "adapter").exists()
    assert _rows(run_dir, "train")[0]["clients"] == 1
    first, last = _rows(run_dir, "server-eval")
    assert "loss" not in first and "loss" in last  # round 0 skipped, last round scored


def test_averaging_error_matches_hand_computation():
    """The per-round diagnostic: the share of the mean update that mean(B) mean(A) misses."""
    rng = np.random.default_rng(3)
    a0, b0 = rng.normal(size=(2, 5)), rng.normal(size=(4, 2))
    clients = [(rng.normal(size=(2, 5)), rng.normal(size=(4, 2))) for _ in range(3)]
    weights = np.array([1.0, 2.0, 5.0])
    w = weights / weights.sum()
    states = [
        {key_a("m"): a.astype(np.float32), key_b("m"): b.astype(np.float32)} for a, b in clients
    ]
    af = [s[key_a("m")].astype(np.float64) for s in states]
    bf = [s[key_b("m")].astype(np.float64) for s in states]
    mean_ba = sum(wk * b @ a for wk, a, b in zip(w, af, bf))
    approx = sum(wk * b for wk, b in zip(w, bf)) @ sum(wk * a for wk, a in zip(w, af))
    sent = {key_a("m"): a0, key_b("m"): b0}
    expected = np.linalg.norm(mean_ba - approx) / np.linalg.norm(mean_ba - b0 @ a0)
    assert averaging_error(states, weights, sent) == pytest.approx(expected, rel=1e-9)
    assert averaging_error(states[:1], weights[:1], sent) == 0.0


def test_lazy_examples_encode_each_record_once_and_only_when_drawn():
    from fedsim_methods.fedit.cache import LazyExamples

    calls: list[str] = []

    def encode_one(record: str) -> str:
        calls.append(record)
        return record.upper()

    examples = LazyExamples(["a", "b", "c", "d"], encode_one)
    assert len(examples) == 4 and calls == []
    assert examples[2] == "C" and examples[-1] == "D" and examples[2] == "C"
    assert examples[0:2] == ["A", "B"]
    assert calls == ["c", "d", "a", "b"]
    with pytest.raises(IndexError):
        examples[4]


def test_warm_up_loads_the_model_and_partitions_a_client_call_then_reuses(tiny_exp):
    """What a Ray worker runs as it boots (``fedsim.backends.warm.warm_up`` -> ``warm_client``)."""
    import fedsim_methods.fedit.cache as cache
    from fedsim.backends.warm import warm_up
    from fedsim_methods.fedit.instructions import _federated
    from fedsim_methods.fedit.model import _MODELS, clear_cache

    exp = tiny_exp()
    clear_cache()
    _federated.cache_clear()
    warm_up(exp)
    assert _federated.cache_info().currsize == 1 and len(_MODELS) == 1
    warmed = cache.lm_of(exp)  # the model the first client call gets: already built
    before = _federated.cache_info().hits
    cache.data_of(exp)
    assert _federated.cache_info().hits == before + 1
    warm_up(exp)  # a second warm-up loads nothing again
    assert cache.lm_of(exp) is warmed and len(_MODELS) == 1
    assert _federated.cache_info().currsize == 1


@pytest.mark.slow
def test_fedit_runs_on_the_virtual_clock(tiny_exp, tmp_path):
    """[systems] (docs/async.md): adapters are what travel, so a client's time is its local
    steps and its LoRA bytes; one of the three sampled clients is over-committed."""
    from fedsim.runner import run_experiment

    exp = tiny_exp(systems={"overcommit": 1.5})
    run_dir, summary = run_experiment(exp, tmp_path / "run")
    assert summary["status"] == "completed", summary
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    systems = [r for r in rows if r["scope"] == "systems"]
    assert [r["over-committed"] for r in systems] == [1, 1]
    assert all(r["round-s"] > 0 for r in systems)
