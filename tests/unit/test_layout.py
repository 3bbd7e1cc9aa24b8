"""The bootstrap writer lays out inodes exactly as nydus-image does.

The real fixture (nydus-image, Feb 2023) is read back into a tree and written again; the
bytes must match except for the fields that changed in nydus since (the spec's §9): the
ENCRYPTION_NONE flag, CRC-32C in the chunk table, root `i_ino` 1 (was 0), 512 KiB
`mapped_blkaddr` alignment (was 2 MiB), and the default prefetch table (none then).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rafs.builder.bootstrap import BootstrapOptions, write_bootstrap
from rafs.format.blobtable import Compressor, Digester
from rafs.format.chunktable import ChunkInfo
from rafs.format.inode import InodeExtended
from rafs.format.superblock import RafsSuperFlags, SuperBlockExt
from rafs.reader.image import RafsImage
from tests.support.merge_reference import tree_from_bootstrap


def _normalise(data: bytes) -> bytes:
    """Clear the fields whose writer changed between the fixture's nydus and HEAD."""
    out = bytearray(data)
    ext = SuperBlockExt.unpack(out, 1152)
    flags = ext.s_flags & ~RafsSuperFlags.ENCRYPTION_NONE
    out[1152 : 1152 + 256] = replace(ext, s_flags=flags).pack()
    out[0x580 + 68 : 0x580 + 72] = bytes(4)  # mapped_blkaddr
    root_at = 2 * 4096 + 128 * 32
    root = InodeExtended.unpack(out, root_at)
    out[root_at : root_at + 64] = replace(root, i_ino=0).pack()
    for at in range(ext.s_chunk_table_offset, ext.s_chunk_table_offset + ext.s_chunk_table_size,
                    ChunkInfo.SIZE):  # fmt: skip
        info = ChunkInfo.unpack(out, at)
        out[at : at + 80] = replace(info, flags=info.flags & ~0x10, crc32=0).pack()
    return bytes(out)


def test_rewriting_the_fixture_gives_its_bytes(fixtures_dir: Path) -> None:
    original = (fixtures_dir / "rafs-v6-2.2.boot").read_bytes()
    image = RafsImage(original, "fixture")
    rewritten = write_bootstrap(
        tree_from_bootstrap(image),
        image.blobs,
        BootstrapOptions(image.chunk_size, Compressor.ZSTD, Digester.BLAKE3,
                         prefetch_patterns=()),
    )
    assert len(rewritten) == len(original)
    assert _normalise(rewritten) == _normalise(original)
