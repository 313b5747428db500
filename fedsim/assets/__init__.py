"""Offline assets: declarative manifests (``datasets/*.toml``) resolved into a local cache.

``fetch(name)`` returns the prepared folder of a dataset or model, downloading the pinned
file and converting it the first time; readers in ``fedsim.data.sources`` build on it.
``cache_status(name)`` says whether it is prepared and intact (sizes and sha256 of the
prepared files are recorded when it is prepared).
"""

from fedsim.assets.cache import asset_dir, cache_root
from fedsim.assets.fetch import CacheStatus, cache_status, fetch, is_prepared, reading_prepared
from fedsim.assets.manifest import AssetError, Manifest, list_manifests, load_manifest

__all__ = [
    "AssetError",
    "CacheStatus",
    "Manifest",
    "asset_dir",
    "cache_root",
    "cache_status",
    "fetch",
    "is_prepared",
    "list_manifests",
    "load_manifest",
    "reading_prepared",
]
