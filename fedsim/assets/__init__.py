"""Offline assets: declarative manifests (``datasets/*.toml``) resolved into a local cache.

``fetch(name)`` returns the prepared folder of a dataset or model, downloading the pinned
file and converting it the first time; readers in ``fedsim.data.sources`` build on it.
"""

from fedsim.assets.cache import asset_dir, cache_root
from fedsim.assets.fetch import fetch, is_prepared
from fedsim.assets.manifest import AssetError, Manifest, list_manifests, load_manifest

__all__ = [
    "AssetError",
    "Manifest",
    "asset_dir",
    "cache_root",
    "fetch",
    "is_prepared",
    "list_manifests",
    "load_manifest",
]
