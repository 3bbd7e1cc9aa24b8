"""Find sections of a Nydus layer from its end: through the ToC, or by walking tar headers.

Only the bytes needed are read: the last tar header, the ToC entries, then the section
itself. Layers without a ToC (older builders) are walked header by header backwards.

A layer is its own data blob, and `own_blob_index` says which entry of its bootstrap's blob
table that is. rafs and nydus-image 2.2 and later mark it (INLINED_FS_META, the placeholder
id). nydus-image before 2.2 wrote neither: the entry has features ALIGNED alone and the
blob's hash as id, which is not the layer file's digest, and its compressed size counts the
chunks alone. The chunks open the layer, in its `image.blob` section, which holds them alone
(master of late 2022) or (v2.1, `--inline-bootstrap`) is followed there by the CI table and
its header. So an unmarked entry is the layer's when the image.blob section holds exactly
its bytes; other entries are blobs of a chunk dictionary or a parent, found by id in a
blob folder (and so is every blob when no entry, or more than one, fits).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import BinaryIO, Protocol

from rafs.codecs import ZSTD_MAGIC, decompress, zstd_bounded
from rafs.errors import FormatError, NotFound
from rafs.format.blobmeta import (
    BLOB_META_HEADER_SIZE,
    BlobMetaHeader,
    ChunkInfoV1,
    ChunkInfoV2,
    unpack_ci_table,
)
from rafs.format.blobtable import PLACEHOLDER_BLOB_ID, BlobEntry, BlobFeatures, Compressor
from rafs.format.toc import (
    SECTION_BLOB,
    SECTION_BLOB_META,
    TAR_BLOCK,
    TOC_NAME,
    TocEntry,
    TocFlags,
    parse_section_header,
)

MAX_TOC_SIZE = 1 << 20
MAX_SECTION_SIZE = 1 << 30
_TOC_COMPRESSOR = {
    TocFlags.COMPRESSION_NONE: Compressor.NONE,
    TocFlags.COMPRESSION_ZSTD: Compressor.ZSTD,
    TocFlags.COMPRESSION_LZ4_BLOCK: Compressor.LZ4_BLOCK,
}


def _read_at(f: BinaryIO, offset: int, size: int, where: str) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise FormatError(f"{where}: truncated: wanted {size} bytes at {offset}")
    return data


def _file_size(f: BinaryIO) -> int:
    return f.seek(0, 2)


def ends_with_section(f: BinaryIO) -> bool:
    """Whether a file ends with a valid section tar header, as every Nydus layer does."""
    size = _file_size(f)
    if size < TAR_BLOCK:
        return False
    try:
        parse_section_header(_read_at(f, size - TAR_BLOCK, TAR_BLOCK, ""), "")
    except FormatError:
        return False
    return True


def read_toc(f: BinaryIO, where: str) -> list[TocEntry] | None:
    """The ToC entries of a layer, or None when the layer ends with another section."""
    size = _file_size(f)
    if size < TAR_BLOCK:
        raise FormatError(f"{where}: {size} bytes is too small for a Nydus layer")
    name, toc_size = parse_section_header(_read_at(f, size - TAR_BLOCK, TAR_BLOCK, where), where)
    if name != TOC_NAME:
        return None
    if toc_size % TocEntry.SIZE or toc_size > MAX_TOC_SIZE or toc_size + TAR_BLOCK > size:
        raise FormatError(f"{where}: ToC of {toc_size} bytes does not fit the layer")
    raw = _read_at(f, size - TAR_BLOCK - toc_size, toc_size, where)
    entries = []
    for offset in range(0, toc_size, TocEntry.SIZE):
        entry = TocEntry.unpack(raw, offset)
        try:
            entry.validate()
        except FormatError as exc:
            raise FormatError(f"{where}: {exc}") from None
        entries.append(entry)
    return entries


def _find_by_headers(f: BinaryIO, name: bytes, where: str) -> tuple[int, int]:
    """(offset, size) of a section found by walking the tar headers from the end."""
    end = _file_size(f)
    while end >= TAR_BLOCK:
        section, size = parse_section_header(_read_at(f, end - TAR_BLOCK, TAR_BLOCK, where), where)
        start = end - TAR_BLOCK - size
        if start < 0:
            raise FormatError(f"{where}: section {section!r} runs before the start of the layer")
        if section == name:
            return start, size
        end = start
    raise NotFound(f"{where}: no {name.decode()} section in the layer")


def _maybe_zstd(data: bytes, where: str) -> bytes:
    """Without a ToC nothing says how a section is stored: a zstd frame is decompressed
    (layers whose ToC is lost), anything else is taken as raw (pre-ToC builders)."""
    if not data.startswith(ZSTD_MAGIC):
        return data
    try:
        return zstd_bounded(data, MAX_SECTION_SIZE)
    except FormatError as exc:
        raise FormatError(f"{where}: {exc}") from None


def read_section(f: BinaryIO, name: bytes, where: str) -> bytes:
    """The uncompressed bytes of a named section, its digest verified when the ToC has one."""
    entries = read_toc(f, where)
    if entries is None:
        offset, size = _find_by_headers(f, name, where)
        if size > MAX_SECTION_SIZE:
            raise FormatError(f"{where}: section {name.decode()} of {size} bytes is too large")
        return _maybe_zstd(_read_at(f, offset, size, where), f"{where}: section {name.decode()}")
    for entry in entries:
        if entry.section == name:
            break
    else:
        raise NotFound(f"{where}: the ToC has no {name.decode()} entry")
    layer_size = _file_size(f)
    if entry.compressed_offset + entry.compressed_size > layer_size:
        raise FormatError(f"{where}: ToC entry {name.decode()} points past the end")
    if entry.uncompressed_size > MAX_SECTION_SIZE:
        raise FormatError(f"{where}: section {name.decode()} of {entry.uncompressed_size} "
                          "bytes is too large")  # fmt: skip
    stored = _read_at(f, entry.compressed_offset, entry.compressed_size, where)
    try:
        data = decompress(stored, _TOC_COMPRESSOR[TocFlags(entry.flags)], entry.uncompressed_size)
    except FormatError as exc:
        raise FormatError(f"{where}: section {name.decode()}: {exc}") from None
    expected = entry.uncompressed_digest
    if any(expected) and hashlib.sha256(data).digest() != expected:
        raise FormatError(f"{where}: section {name.decode()} does not match its ToC digest")
    return data


def read_blob_meta(
    f: BinaryIO, where: str
) -> tuple[BlobMetaHeader, list[ChunkInfoV1] | list[ChunkInfoV2]]:
    """The blob.meta section of a layer: its header and its chunk infos, found through the
    tar headers (the section holds the stored CI table, then the 4096-byte header)."""
    offset, size = _find_by_headers(f, SECTION_BLOB_META, where)
    what = f"{where}: blob.meta"
    if not BLOB_META_HEADER_SIZE <= size <= MAX_SECTION_SIZE:
        raise FormatError(f"{what}: a section of {size} bytes cannot hold its header")
    raw = _read_at(f, offset, size, where)
    header = BlobMetaHeader.unpack(raw, size - BLOB_META_HEADER_SIZE)
    try:
        header.validate()
        if header.s_ci_compressed_size != size - BLOB_META_HEADER_SIZE:
            raise FormatError(f"header says {header.s_ci_compressed_size} bytes of CI table, "
                              f"the section holds {size - BLOB_META_HEADER_SIZE}")  # fmt: skip
        if header.s_ci_compressor not in Compressor.__members__.values():
            raise FormatError(f"unknown CI compressor {header.s_ci_compressor}")
        data = decompress(raw[: header.s_ci_compressed_size], header.s_ci_compressor,
                          header.s_ci_uncompressed_size)  # fmt: skip
        return header, unpack_ci_table(data, header)
    except FormatError as exc:
        raise FormatError(f"{what}: {exc}") from None


class BlobIdentity(Protocol):
    """What `is_marked_inline` reads of a blob table entry (RAFS v6 or v5)."""

    @property
    def id(self) -> str: ...

    @property
    def features(self) -> int: ...


def is_marked_inline(blob: BlobIdentity) -> bool:
    """Whether a blob table entry says it is the layer its bootstrap is inlined in."""
    return bool(blob.features & BlobFeatures.INLINED_FS_META) or blob.id == PLACEHOLDER_BLOB_ID


def own_blob_index(f: BinaryIO, blobs: Sequence[BlobEntry], where: str) -> int | None:
    """The index of the blob table entry that is the layer `f` itself, or None when no entry
    is (every chunk of the layer lives in other blobs). See the module docstring."""
    for index, blob in enumerate(blobs):
        if is_marked_inline(blob):
            return index
    try:
        offset, size = _find_by_headers(f, SECTION_BLOB, where)
    except NotFound:
        return None
    fitting = [index for index, blob in enumerate(blobs) if offset == 0 and _fits(blob, size)]
    return fitting[0] if len(fitting) == 1 else None


def _fits(blob: BlobEntry, image_blob_size: int) -> bool:
    """Whether the layer's image.blob section (at its start) holds this blob: its chunks
    alone, or (nydus-image 2.1) its chunks, then its CI table and header."""
    if image_blob_size == blob.compressed_size:
        return True
    with_ci = blob.ci_offset + blob.ci_compressed_size + BLOB_META_HEADER_SIZE
    return blob.ci_offset == blob.compressed_size and image_blob_size == with_ci
