"""Data: typed readers over the asset cache (``sources``), partitioning, federated views.

Only the light readers are re-exported here; ``partition``/``federated`` pull in
flwr-datasets and are imported where they are used.
"""

from fedsim.data.sources import (
    ImageData,
    InstructionRecord,
    TextData,
    load_image_classification,
    load_instructions,
    load_text_classification,
)

__all__ = [
    "ImageData",
    "InstructionRecord",
    "TextData",
    "load_image_classification",
    "load_instructions",
    "load_text_classification",
]
