"""Compression variants of a layer blob, linked through content labels (BuildKit `cache/refs.go`).

A variant (the same layer with another compression) is tied to the ref's primary blob both
ways with containerd GC reference labels, so that neither is collected while the other is
kept, and the variant's descriptor is kept on its own content as labels:

    primary:  containerd.io/gc.ref.content.blob-<variant digest> = <variant digest>
    variant:  containerd.io/gc.ref.content.blob-<primary digest> = <primary digest>
              buildkit.io/blob/mediatype = <media type>
              buildkit.io/blob/annotation.<key> = <value>   for the keys in ANNOTATIONS_KEPT

`descriptors` walks these links from the primary (which may itself have been linked from
elsewhere), rebuilding each variant's descriptor from its labels; size comes from its info.
"""

from __future__ import annotations

from collections.abc import Iterator

from rafs.content import Info, Store
from rafs.errors import NotFound
from rafs.oci import Descriptor
from rafs.oci import constants as mt

VARIANT_LABEL_PREFIX = "containerd.io/gc.ref.content.blob-"
MEDIA_TYPE_LABEL = "buildkit.io/blob/mediatype"
ANNOTATION_LABEL_PREFIX = "buildkit.io/blob/annotation."

ANNOTATIONS_KEPT = (
    mt.ANNOTATION_UNCOMPRESSED, mt.NYDUS_BLOB_ANNOTATION, mt.NYDUS_BOOTSTRAP_ANNOTATION,
)
"""Descriptor annotations persisted as labels (BuildKit's `additionalAnnotations`, nydus build)."""


def descriptor_labels(desc: Descriptor) -> dict[str, str]:
    """The labels that keep `desc`'s media type and kept annotations on its content."""
    labels = {MEDIA_TYPE_LABEL: desc.media_type}
    for key in ANNOTATIONS_KEPT:
        if key in desc.annotations:
            labels[ANNOTATION_LABEL_PREFIX + key] = desc.annotations[key]
    return labels


def descriptor_from_info(info: Info) -> Descriptor | None:
    """The descriptor kept in a blob's labels, or None if it has none."""
    media_type = info.labels.get(MEDIA_TYPE_LABEL)
    if media_type is None:
        return None
    annotations = {key.removeprefix(ANNOTATION_LABEL_PREFIX): value
                   for key, value in info.labels.items()
                   if key.startswith(ANNOTATION_LABEL_PREFIX)}  # fmt: skip
    return Descriptor(media_type, info.digest, info.size, annotations)


def link_variant(store: Store, primary: str, variant: Descriptor) -> None:
    """Tie `variant` to the `primary` blob both ways and keep its descriptor as labels."""
    labels = {VARIANT_LABEL_PREFIX + primary: primary, **descriptor_labels(variant)}
    store.update(Info(store.info(variant.digest).digest, labels=labels),
                 *(f"labels.{key}" for key in labels))  # fmt: skip
    key = VARIANT_LABEL_PREFIX + variant.digest
    store.update(Info(store.info(primary).digest, labels={key: variant.digest}), f"labels.{key}")


def descriptors(store: Store, primary: Descriptor) -> Iterator[Descriptor]:
    """`primary`, then every variant reachable through the links, each once."""
    yield primary
    seen: set[str] = {primary.digest}
    pending: list[str] = [primary.digest]
    while pending:
        try:
            info = store.info(pending.pop())
        except NotFound:
            continue
        for key, digest in sorted(info.labels.items()):
            if not key.startswith(VARIANT_LABEL_PREFIX) or digest in seen:
                continue
            seen.add(digest)
            pending.append(digest)
            try:
                desc = descriptor_from_info(store.info(digest))
            except NotFound:
                continue
            if desc is not None:
                yield desc
