"""What ``fedsim resume`` checks before it touches a run directory.

A resume rewrites ``metrics.jsonl``/``comm.csv`` from the checkpoint's round on, so it first
makes sure there is something sound to continue: a readable config, well-formed metrics and
traffic rows, a verified checkpoint of the same experiment, a backend that can restore the
method's client state, and a run that has not already completed. Any refusal leaves every
file as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fedsim.checkpoint import Checkpoint, load_checkpoint
from fedsim.config.load import config_fingerprint
from fedsim.config.schema import Experiment
from fedsim.errors import UsageError
from fedsim.registry import get_method
from fedsim.results.status import run_status
from fedsim.results.writer import RunDataError, check_comm, check_metrics

CLIENT_STATE_BACKENDS = ("inprocess", "ray")  # the backends whose contexts fedsim holds


CLIENT_STATE_BACKENDS = ("inprocess", "ray")  # the backends whose contexts fedsim holds


class ResumeRefused(UsageError):
    """The run directory cannot be resumed as it is; the message says why and what to do."""


@dataclass
class ResumePlan:
    exp: Experiment
    checkpoint: Checkpoint | None  # None: no checkpoint was saved, the run restarts
    notes: list[str] = field(default_factory=list)  # for the log once the resume starts


def plan_resume(run_dir: Path, force: bool = False) -> ResumePlan:
    """Check ``run_dir`` (see the module docstring); raise ResumeRefused or RunDataError."""
    from fedsim.config.load import load_run_config

    run_dir = Path(run_dir)
    exp = load_run_config(run_dir)
    status = run_status(run_dir)
    if status == "completed":
        raise ResumeRefused(
            f"{run_dir}: the run completed all {exp.run.rounds} rounds; nothing to resume "
            "(start another with fedsim run ... --out NEW_DIR)"
        )
    for what, check in (("metrics are", check_metrics), ("traffic rows are", check_comm)):
        _, problems = check(run_dir)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise RunDataError(
                f"{problems[0]}{more}: the run's {what} damaged; resume leaves the run as "
                "it is (repair or delete those lines, or start again with fedsim run)"
            )
    notes: list[str] = []
    ckpt = load_checkpoint(run_dir, skipped=notes)
    if ckpt is None:
        notes.append(f"{run_dir}: no checkpoint was saved; the run starts again from round 1")
        return ResumePlan(exp, None, notes)
    saved_method = ckpt.meta.get("method")
    if saved_method is not None and saved_method != exp.method:
        raise ResumeRefused(
            f"{run_dir / 'config.toml'}: method = '{exp.method}', but the checkpoint of round "
            f"{ckpt.server_round} was saved by method '{saved_method}'; --force continues an "
            "edited config of the same method only (undo the edit, or start a new run)"
        )
    saved = ckpt.meta.get("config_sha256")
    accepted = (config_fingerprint(exp), config_fingerprint(exp, with_defaults=True))
    if saved is not None and saved not in accepted and not force:
        raise ResumeRefused(
            f"{run_dir / 'config.toml'}: differs from the experiment the checkpoint of round "
            f"{ckpt.server_round} was saved with; undo the edit, or resume --force to continue "
            "with the edited config"
        )
    method = get_method(exp.method)
    if method.stateful_clients(exp) and ckpt.client_states is None:
        raise ResumeRefused(
            f"{run_dir}: method '{exp.method}' keeps client state, and this run's checkpoint "
            "holds none (it ran on Flower's engine, which keeps Context.state out of reach); "
            "start it again"
        )
    if method.stateful_clients(exp) and exp.run.backend not in CLIENT_STATE_BACKENDS:
        raise ResumeRefused(
            f"{run_dir}: method '{exp.method}' keeps client state, which backend "
            f"'{exp.run.backend}' cannot restore; set run.backend to inprocess or ray in "
            "config.toml and resume"
        )
    return ResumePlan(exp, ckpt, notes)
