"""Damaging bootstraps on purpose, for tests of what the reader, check and mounts do then;
rewriting layers into the layouts of older builders."""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace

from rafs.builder.bootstrap import DEVICE_TABLE_OFFSET
from rafs.format.blobmeta import BlobMetaHeader
from rafs.format.blobtable import BlobEntry, BlobFeatures
from rafs.format.dirent import Dirent, unpack_dirent_block
from rafs.format.inode import DataLayout
from rafs.format.toc import (
    SECTION_BLOB,
    SECTION_BLOB_META,
    SECTION_BOOTSTRAP,
    TAR_BLOCK,
    pack_section_header,
)
from rafs.reader.image import RafsImage
from rafs.reader.layer import read_section


def redirect_dirent(boot: bytes, directory: str, name: bytes, nid: int) -> bytes:
    """A copy of a bootstrap where `directory`'s entry `name` points at `nid` (e.g. an
    ancestor, making a directory cycle)."""
    image = RafsImage(boot, "boot")
    st = image.stat(image.lookup(directory))
    assert st.layout == DataLayout.FLAT_INLINE and st.size < image.block_size
    block = boot[st.body_offset : st.body_offset + st.size]
    for index, (entry_name, _) in enumerate(unpack_dirent_block(block, st.size)):
        if entry_name == name:
            at = st.body_offset + index * Dirent.SIZE
            return boot[:at] + nid.to_bytes(8, "little") + boot[at + 8 :]
    raise AssertionError(f"{directory} has no entry {name!r}")


def as_layer_before_nydus_2_2(layer: bytes, ci_in_image_blob: bool) -> tuple[bytes, str]:
    """A rafs layer rewritten in the layout nydus-image wrote before 2.2, and the id its
    bootstrap then gives its blob: the SHA-256 of the image.blob section's bytes (v2.1's
    blob hash), which is not the layer file's digest.

    The blob table entry has features ALIGNED alone (no INLINED_FS_META), its real id, and
    as compressed size the chunks alone; the bootstrap is stored raw, no ToC follows. With
    `ci_in_image_blob` it is the v2.1 layout (`--inline-bootstrap`, read from v2.1.6's
    `builder/directory.rs` and `core/blob.rs`): `chunks | CI table | CI header |
    H(image.blob) | bootstrap | H(image.boot)`, the CI table right after the chunks.
    Without, the CI table has a section of its own, as in the Dec-2022 layer of nydus's
    `tests/texture/toc/2fa78cad…` (which also has a ToC, left out here): `chunks |
    H(image.blob) | CI table + header | H(blob.meta) | bootstrap | H(image.boot)`.
    """
    f = io.BytesIO(layer)
    boot = read_section(f, SECTION_BOOTSTRAP, "layer")
    image = RafsImage(boot, "layer")
    [blob] = image.blobs
    chunks = layer[: blob.ci_offset - TAR_BLOCK]  # a rafs layer: chunks, then H(image.blob)
    header = BlobMetaHeader.unpack(layer, blob.ci_offset + blob.ci_compressed_size)
    ci_table = layer[blob.ci_offset : blob.ci_offset + blob.ci_compressed_size]
    if ci_in_image_blob:
        ci_offset = len(chunks)
        header = replace(header, s_features=BlobFeatures.ALIGNED, s_ci_offset=ci_offset)
        blob_section = chunks + ci_table + header.pack()
        body = blob_section + pack_section_header(SECTION_BLOB, len(blob_section))
    else:
        ci_offset = blob.ci_offset
        blob_section = chunks
        meta = ci_table + header.pack()
        body = (chunks + pack_section_header(SECTION_BLOB, len(chunks))
                + meta + pack_section_header(SECTION_BLOB_META, len(meta)))  # fmt: skip
    blob_id = hashlib.sha256(blob_section).hexdigest()
    entry = replace(blob, blob_id=blob_id.encode(), features=BlobFeatures.ALIGNED,
                    compressed_size=len(chunks), ci_offset=ci_offset)  # fmt: skip
    patched = bytearray(boot)
    patched[DEVICE_TABLE_OFFSET : DEVICE_TABLE_OFFSET + 64] = blob_id.encode()
    table = image.ext.s_blob_table_offset
    patched[table : table + BlobEntry.SIZE] = entry.pack()
    return body + patched + pack_section_header(SECTION_BOOTSTRAP, len(patched)), blob_id
