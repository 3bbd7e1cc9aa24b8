"""An image's layers as a chain of refs: `layer_ref` makes the ref of a layer already in the
store, giving its descriptor its diffID (the config's `rootfs.diff_ids[i]`) as the
`containerd.io/uncompressed` annotation, as BuildKit's `GetByBlob` requires. (Fetching the
layers into the store is `rafs.convert`'s: `import_image`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from rafs.cache.refs import CacheManager, ImmutableRef
from rafs.errors import FormatError, InvalidArgument
from rafs.oci import Descriptor
from rafs.oci.constants import ANNOTATION_UNCOMPRESSED


def layer_ref(cache: CacheManager, layer: Descriptor, diff_id: str,
              parent: ImmutableRef | None) -> ImmutableRef:  # fmt: skip
    """The ref of `layer` (already in the store) with diffID `diff_id` on top of `parent`."""
    annotations = {**layer.annotations, ANNOTATION_UNCOMPRESSED: diff_id}
    return cache.get_by_blob(replace(layer, annotations=annotations), parent)


def check_layers(layers: Sequence[Descriptor], diff_ids: Sequence[str], what: str) -> None:
    """An image has layers, and one diffID in its config for each."""
    if not layers:
        raise InvalidArgument(f"{what}: the image has no layers")
    if len(layers) != len(diff_ids):
        raise FormatError(f"{what}: {len(layers)} layers but {len(diff_ids)} diff_ids in "
                          "the config")  # fmt: skip

