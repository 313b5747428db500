"""FedIT's server side: the initial adapter, the held-out evaluation, the final save, and
the checks that read the base model from disk before a run starts.

Runs on the server only (a SuperNode needs ``clients/fedit.py`` alone).
"""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ArrayRecord, MetricRecord

from fedsim.config.schema import Experiment
from fedsim_methods.fedit.adapter import (
    from_arrays,
    initial_adapter,
    is_residual,
    load_global,
    to_arrays,
)
from fedsim_methods.fedit.cache import data_of, examples_of, lm_of, pad_id
from fedsim_methods.fedit.config import fedit_of, lora_of
from fedsim_methods.fedit.evaluate import generate, generation_scores, heldout_loss
from fedsim_methods.fedit.generate import ADAPTER_DIR, RESIDUAL_FILE
from fedsim_methods.fedit.prompts import encode_prompt


def initial_arrays(exp: Experiment) -> ArrayRecord:
    """peft's default LoRA init from (seed, LORA_INIT); zero residuals in exact mode."""
    cfg = fedit_of(exp)
    state = initial_adapter(lm_of(exp), exp.run.seed, with_residual=cfg.aggregation == "exact")
    return to_arrays(state, "fp32")


def generation_round(exp: Experiment, server_round: int) -> bool:
    every = fedit_of(exp).eval_generate_every
    if every == 0:
        return False
    return server_round in (0, exp.run.rounds) or server_round % every == 0


def server_evaluator(exp: Experiment):
    """Held-out loss and perplexity every evaluation; ROUGE-L and exact match (greedy,
    bounded) on ``eval_generate_per_category`` records per category every
    ``eval_generate_every`` rounds, round 0 and the last round."""
    cfg = fedit_of(exp)
    data = data_of(exp)
    lm = lm_of(exp)
    tests = examples_of(exp, lm, "test", "response")
    cap = cfg.eval_generate_per_category
    chosen, seen = [], {}
    for record in data.test:  # the first `cap` test records of each category (fixed)
        seen[record.category] = seen.get(record.category, 0) + 1
        if cap == 0 or seen[record.category] <= cap:
            chosen.append(record)
    prompts = [encode_prompt(r, lm.tokenizer, cfg.template, cfg.max_length) for r in chosen]

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if server_round == 0 and not cfg.eval_at_start:
            return MetricRecord({})  # e.g. local-only baselines: round 0 is the base model
        load_global(lm, arrays)
        out = heldout_loss(lm.model, tests, cfg.eval_batch_size, lm.device, pad_id(lm))
        if generation_round(exp, server_round) and prompts:
            answers = generate(
                lm.model,
                lm.tokenizer,
                prompts,
                cfg.eval_max_new_tokens,
                cfg.eval_batch_size,
                lm.device,
            )
            refs, cats = [r.output for r in chosen], [r.category for r in chosen]
            out.update(generation_scores(answers, refs, cats))
        return MetricRecord(out)

    return evaluate_fn


def save_final(exp: Experiment, arrays: ArrayRecord, run_dir: Path) -> Path | None:
    """The final global adapter as a peft folder (``save_pretrained``) in RUN_DIR/adapter;
    exact mode's residuals go beside it in ``fedsim_residual.safetensors``."""
    if not fedit_of(exp).save_adapter:
        return None
    from safetensors.numpy import save_file

    lm = lm_of(exp)
    load_global(lm, arrays)
    out = Path(run_dir) / ADAPTER_DIR
    lm.model.save_pretrained(str(out))
    residuals = {k: v for k, v in from_arrays(arrays).items() if is_residual(k)}
    if residuals:
        save_file({k: v.astype("float32") for k, v in residuals.items()}, str(out / RESIDUAL_FILE))
    return out


def preflight(exp: Experiment) -> None:
    """Before a run: the base model resolves, its module names fit ``[lora]``, and a chat
    template exists when ``fedit.template = "chat"`` (reads the model folder from disk)."""
    _check_model(fedit_of(exp), lora_of(exp))


def _check_model(cfg, lora) -> None:
    """Base model resolvable; target modules present as Linear layers; chat template there."""
    from fedsim.assets.manifest import list_manifests
    from fedsim_methods.fedit.model import local_folder, model_source, module_names

    assets = {m.name: m.kind for m in list_manifests()}
    if assets.get(cfg.base_model, "model") != "model" or (
        cfg.base_model not in assets and not cfg.online
    ):
        model_source(cfg)  # raises the fedit.base_model message if it resolves to nothing
    folder = local_folder(cfg)
    if folder is None:  # an asset not fetched yet, or a hub id: checked when loaded
        return
    modules = module_names(str(folder))
    linear = sorted({n.rsplit(".", 1)[-1] for n, kind in modules if kind == "Linear"})
    for target in lora.target_modules:
        if not any(n == target or n.endswith("." + target) for n, kind in modules):
            raise ValueError(
                f"lora.target_modules: '{target}' matches no module of {cfg.base_model} "
                f"(its Linear layers: {', '.join(linear)})"
            )
    if cfg.template == "chat" and not _has_chat_template(folder):
        raise ValueError(
            f"fedit.template: 'chat' needs a chat template, and {cfg.base_model} has none"
        )


def _has_chat_template(folder) -> bool:
    if (folder / "chat_template.jinja").is_file():
        return True
    path = folder / "tokenizer_config.json"
    return path.is_file() and bool(json.loads(path.read_text()).get("chat_template"))
