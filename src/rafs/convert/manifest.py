"""How a manifest and its config change when an image becomes Nydus, and back.

To Nydus (nydus-snapshotter `convertManifest`, converter-semantics §1.7):
- layers: one Nydus blob layer per source layer (media type
  `application/vnd.oci.image.layer.nydus.blob.v1`, annotation `nydus-blob: "true"`), then the
  gzip bootstrap layer last (`nydus-bootstrap: "true"`, `nydus-fs-version: "6"`). The
  `containerd.io/uncompressed` annotation is dropped from manifest layers;
- config: `rootfs.diff_ids` from each layer's uncompressed digest (a Nydus blob's is its own
  digest, the bootstrap's the sha256 of its tar), and one history entry appended for the
  bootstrap layer ("Nydus Converter" / "Nydus Bootstrap Layer");
- the manifest is an OCI manifest (Nydus layer media types are OCI-only, as in BuildKit);
  `subject` is the source manifest (without platform) when asked for (`--with-referrer`).

Back to OCI: the bootstrap layer and its history entry go; the layers are the gzip tars.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from rafs.digest import Digest
from rafs.errors import FormatError
from rafs.oci import Descriptor, History, ImageConfig, Manifest
from rafs.oci import constants as mt

BOOTSTRAP_HISTORY = History(created_by=mt.NYDUS_HISTORY_CREATED_BY,
                            comment=mt.NYDUS_HISTORY_COMMENT)  # fmt: skip


def is_nydus(manifest: Manifest) -> bool:
    """Whether the manifest's last layer is a Nydus bootstrap layer."""
    return bool(manifest.layers) and (
        manifest.layers[-1].annotations.get(mt.NYDUS_BOOTSTRAP_ANNOTATION) == "true"
    )


def _diff_id(layer: Descriptor) -> Digest:
    return Digest(layer.annotations[mt.ANNOTATION_UNCOMPRESSED])


def _for_manifest(layer: Descriptor, **extra: str) -> Descriptor:
    """`layer` as a manifest lists it: no uncompressed annotation, `extra` added."""
    annotations = {k: v for k, v in layer.annotations.items() if k != mt.ANNOTATION_UNCOMPRESSED}
    return replace(layer, annotations={**annotations, **extra})


def nydus_image(
    manifest: Manifest, config: ImageConfig, blobs: Sequence[Descriptor],
    bootstrap: Descriptor, subject: Descriptor | None,
) -> tuple[Manifest, ImageConfig]:  # fmt: skip
    """The Nydus manifest (without its config descriptor yet) and config."""
    layers = [_for_manifest(blob, **{mt.NYDUS_BLOB_ANNOTATION: "true"}) for blob in blobs]
    layers.append(_for_manifest(bootstrap, **{mt.NYDUS_BOOTSTRAP_ANNOTATION: "true",
                                              mt.NYDUS_FS_VERSION_ANNOTATION: "6"}))  # fmt: skip
    new_config = replace(config, diff_ids=(*map(_diff_id, blobs), _diff_id(bootstrap)),
                         history=(*config.history, BOOTSTRAP_HISTORY))  # fmt: skip
    new_manifest = replace(
        manifest, media_type=mt.OCI_MANIFEST, layers=tuple(layers),
        subject=None if subject is None else replace(subject, platform=None),
    )  # fmt: skip
    return new_manifest, new_config


def oci_image(
    manifest: Manifest, config: ImageConfig, layers: Sequence[Descriptor]
) -> tuple[Manifest, ImageConfig]:
    """The OCI manifest and config of a Nydus image whose blob layers became `layers`."""
    history = list(config.history)
    bootstrap_entries = [index for index, entry in enumerate(history)
                         if entry.comment == mt.NYDUS_HISTORY_COMMENT]  # fmt: skip
    if bootstrap_entries:
        del history[bootstrap_entries[-1]]
    if len(manifest.layers) != len(layers) + 1:
        raise FormatError("a Nydus manifest has one layer more (the bootstrap) than blobs")
    new_config = replace(config, diff_ids=tuple(map(_diff_id, layers)), history=tuple(history))
    new_manifest = replace(manifest, media_type=manifest.media_type or mt.OCI_MANIFEST,
                           layers=tuple(_for_manifest(layer) for layer in layers),
                           subject=None)  # fmt: skip
    return new_manifest, new_config
