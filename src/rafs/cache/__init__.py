"""A BuildKit-style cache of layer refs over a content store, and `merge_nydus`.

`refs.py` holds the refs and their compression variants, `compression.py` the conversions,
`variants.py` the content labels that link variants, `metadata.py` the SQLite records and
`nydus.py` BuildKit's `MergeNydus`.
"""

from rafs.cache.compression import Compression
from rafs.cache.nydus import merge_nydus
from rafs.cache.refs import CacheManager, ImmutableRef

__all__ = ["CacheManager", "Compression", "ImmutableRef", "merge_nydus"]
