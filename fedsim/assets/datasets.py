"""Which datasets exist (from the manifests) and what kind of task each one is."""

from __future__ import annotations

from functools import lru_cache

# Prepared layout (fedsim/assets/convert.py) -> task family; methods declare the families
# they support. Any source format that prepares images is image classification, and so on.
TASK_OF_LAYOUT = {
    "images": "image-classification",
    "texts": "text-classification",
    "instructions": "instructions",
}


@lru_cache(maxsize=1)
def dataset_tasks() -> dict[str, str]:
    """Dataset name -> task family, for every dataset manifest in ``datasets/``."""
    from fedsim.assets.convert import CONVERTERS
    from fedsim.assets.manifest import list_manifests

    def task(m) -> str:  # noqa: ANN001 - a Manifest
        layout = CONVERTERS[m.format][1] if m.format in CONVERTERS else None
        return TASK_OF_LAYOUT.get(layout, "other")

    return {m.name: task(m) for m in list_manifests() if m.kind == "dataset"}


def known_datasets() -> list[str]:
    return sorted(dataset_tasks())


def task_of(dataset: str) -> str:
    return dataset_tasks()[dataset]
