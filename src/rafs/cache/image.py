"""Taking an image's layers into the cache: blobs into the store, a chain of refs on top.

`layer_ref` makes the ref of a layer already in the store; `import_from_layout` copies an
OCI layout's layers in, each under the ingest ref `import-<digest>` and verified against its
digest before commit, and chains their refs. Each layer descriptor gets its diffID (the config's
`rootfs.diff_ids[i]`) as the `containerd.io/uncompressed` annotation, as BuildKit's
`GetByBlob` requires.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import BinaryIO, cast

from rafs.cache.refs import CacheManager, ImmutableRef
from rafs.content import write_blob
from rafs.errors import FormatError, InvalidArgument
from rafs.oci import Descriptor, ImageConfig, Index, Manifest, OCILayout, parse_manifest
from rafs.oci.constants import ANNOTATION_UNCOMPRESSED, MAX_MANIFEST_SIZE


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


def import_from_layout(cache: CacheManager, layout: OCILayout, tag: str | None) -> ImmutableRef:
    """Import the image tagged `tag` (the only one if None) of an OCI image layout."""
    what = f"{layout.name}:{tag}" if tag else layout.name
    entry = layout.resolve(tag)
    document = parse_manifest(entry.media_type, layout.read_blob(entry, MAX_MANIFEST_SIZE), what)
    if isinstance(document, Index):
        raise InvalidArgument(f"{what}: is an index of {len(document.manifests)} images; "
                              "import one platform's manifest")  # fmt: skip
    assert isinstance(document, Manifest)
    config = ImageConfig.from_bytes(layout.read_blob(document.config, MAX_MANIFEST_SIZE),
                                    f"{what}: config")  # fmt: skip
    check_layers(document.layers, config.diff_ids, what)
    ref = None
    for layer, diff_id in zip(document.layers, config.diff_ids, strict=True):
        with layout.open_blob(layer) as source:
            write_blob(cache.store, f"import-{layer.digest}", cast(BinaryIO, source),
                       size=layer.size, expected=layer.digest)  # fmt: skip
        ref = layer_ref(cache, layer, diff_id, ref)
    assert ref is not None
    return ref
