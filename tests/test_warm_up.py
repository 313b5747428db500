"""``fedsim.backends.warm.warm_up``: what a Ray worker runs as it boots, so that the clients'
first call finds the data loaded instead of loading it in round 1."""

from __future__ import annotations

from flwr.app import Context, RecordDict

from fedsim.backends.warm import warm_up
from fedsim.config import load_experiment
from fedsim.data.client import client_data
from fedsim.data.federated import _federated_image_data


def _context(pid: int, num: int, extra: dict | None = None) -> Context:
    config = {"partition-id": pid, "num-partitions": num, **(extra or {})}
    return Context(run_id=1, node_id=pid + 1, node_config=config, state=RecordDict(), run_config={})


def test_the_first_client_call_after_warm_up_finds_its_data_loaded(tiny_toml):
    exp = load_experiment(tiny_toml, ["run.seed=11"])  # a seed no other test loads
    _federated_image_data.cache_clear()
    warm_up(exp)
    info = _federated_image_data.cache_info()
    assert (info.misses, info.currsize) == (1, 1)
    data = client_data(exp, _context(3, exp.clients.num))
    after = _federated_image_data.cache_info()
    assert (after.misses, after.hits) == (1, info.hits + 1)  # served from the warm cache
    assert len(data.x) == len(data.y) > 0


def test_nodes_with_their_own_folders_load_no_partitions(tiny_toml, tmp_path):
    folders = [str(tmp_path / f"site{i}") for i in range(10)]
    exp = load_experiment(tiny_toml, [f"clients.data_paths={folders!r}".replace("'", '"')])
    _federated_image_data.cache_clear()
    warm_up(exp)
    assert _federated_image_data.cache_info().currsize == 0
