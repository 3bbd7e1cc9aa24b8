"""Files made by the real `nydus-image` (../shared/fixtures/nydus) are read as nydus reads them.

Every record of the fixtures unpacks and packs back to the same bytes; the CLI lists,
reads and checks the v6 bootstrap with its blob; file contents hash to the chunk digests
the fixture README gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import blake3
import pytest

from rafs.format.blobmeta import BlobMetaHeader, ChunkInfoV1, ChunkInfoV2, ZranContext
from rafs.format.blobtable import BlobEntry, DeviceSlot
from rafs.format.chunktable import ChunkInfo
from rafs.format.dirent import pack_dirent_block, unpack_dirent_block
from rafs.format.inode import ChunkAddr, InodeExtended, unpack_inode
from rafs.format.record import Record
from rafs.format.superblock import SuperBlock, SuperBlockExt
from rafs.format.toc import TocEntry, pack_section_header, parse_section_header
from tests.conftest import RafsRunner

R = TypeVar("R", bound=Record)

BOOT = "rafs-v6-2.2.boot"
BLOB = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
ZRAN_META = "233c72f2b6b698c07021c4da367cfe2dff4f049efbaa885ca0ff760ea297865a.blob.meta"
LIB_RS_DIGEST = "f7e2735f1c6ae9cde91e537416b09d8bb71b306a421d19cc1012a51f93a7fe69"
SYNC_IO_DIGEST = "812465bcc9e88393598311dc5fc93abaeccef0185bcd99f9701d17ebdf9adc3f"


def _roundtrip(kind: type[R], data: bytes, offset: int) -> R:
    record = kind.unpack(data, offset)
    assert record.pack() == data[offset : offset + kind.SIZE], kind.__name__
    record.validate()
    return record


@pytest.fixture(scope="module")
def boot(fixtures_dir: Path) -> bytes:
    return (fixtures_dir / BOOT).read_bytes()


@pytest.fixture(scope="module")
def blob(fixtures_dir: Path) -> bytes:
    return (fixtures_dir / BLOB).read_bytes()


def test_bootstrap_records_round_trip(boot: bytes) -> None:
    sb = _roundtrip(SuperBlock, boot, 1024)
    assert (sb.s_root_nid, sb.s_inos, sb.s_blocks, sb.s_meta_blkaddr) == (128, 3, 9, 2)
    ext = _roundtrip(SuperBlockExt, boot, 1152)
    assert (ext.s_flags, ext.s_chunk_table_offset, ext.s_chunk_table_size) == (0x194, 16384, 160)
    slot = _roundtrip(DeviceSlot, boot, 0x580)
    assert (slot.id, slot.blocks, slot.mapped_blkaddr) == (BLOB, 9, 512)
    entry = _roundtrip(BlobEntry, boot, 4096)
    assert (entry.features, entry.compressed_size, entry.uncompressed_size) == (
        0x70000021, 14554, 36864)  # fmt: skip
    chunks = [_roundtrip(ChunkInfo, boot, 16384 + 80 * i) for i in range(2)]
    assert [c.block_id.hex() for c in chunks] == sorted(c.block_id.hex() for c in chunks)


def test_inodes_dirents_and_chunk_indexes_round_trip(boot: bytes) -> None:
    meta = 2 * 4096
    root = unpack_inode(boot, meta + 128 * 32)
    assert isinstance(root, InodeExtended)
    assert root.pack() == boot[meta + 4096 : meta + 4096 + 64]
    tail = boot[meta + 4096 + 64 : meta + 4096 + 64 + root.i_size]
    entries = unpack_dirent_block(tail, root.i_size)
    assert [name for name, _ in entries] == [b".", b"..", b"lib.rs", b"sync_io.rs"]
    packed = pack_dirent_block([n for n, _ in entries], [d.e_nid for _, d in entries],
                               [d.e_file_type for _, d in entries], 4096, pad=False)  # fmt: skip
    assert packed == tail
    for nid, blkaddr, ci_index in ((133, 0, 0), (136, 5, 1)):
        inode = unpack_inode(boot, meta + nid * 32)
        assert inode.pack() == boot[meta + nid * 32 : meta + nid * 32 + 64]
        addr = _roundtrip(ChunkAddr, boot, meta + nid * 32 + 64)
        assert (addr.blob_index, addr.ci_index, addr.c_blk_addr) == (0, ci_index, blkaddr)


def test_chunk_addr_test_vector() -> None:
    """nydus `test_rafs_v6_chunk_addr`: blob 3, CI 0x123456, block 0xa5a53412."""
    addr = ChunkAddr.make(3, 0x123456, 0xA5A53412)
    assert addr.pack() == bytes.fromhex("5634041212 34a5a5".replace(" ", ""))
    assert (addr.blob_index, addr.ci_index) == (3, 0x123456)


def test_blob_sections_round_trip(blob: bytes) -> None:
    end, names = len(blob), []
    while end > 0:
        name, size = parse_section_header(blob[end - 512 : end], BLOB)
        assert pack_section_header(name, size) == blob[end - 512 : end]
        names.append(name)
        end -= 512 + size
    assert names == [b"rafs.blob.toc", b"blob.digest", b"blob.meta", b"image.blob"]
    header = _roundtrip(BlobMetaHeader, blob, 8346)
    assert (header.s_ci_entries, header.s_ci_offset) == (2, 8314)
    infos = [_roundtrip(ChunkInfoV1, blob, 8314 + 16 * i) for i in range(2)]
    extents = [(c.compressed_offset, c.compressed_size, c.uncompressed_offset,
                c.uncompressed_size) for c in infos]  # fmt: skip
    assert extents == [(0, 4828, 0, 16931), (4828, 2974, 20480, 13400)]
    for c_off, c_size, u_off, u_size in extents:
        assert ChunkInfoV1.make(c_off, c_size, u_off, u_size) in infos
    toc = [_roundtrip(TocEntry, blob, 13530 + 128 * i) for i in range(4)]
    assert [t.section for t in toc] == [
        b"image.blob", b"blob.meta", b"blob.meta.header", b"blob.digest"]  # fmt: skip


def test_zran_blob_meta_round_trips(fixtures_dir: Path) -> None:
    data = (fixtures_dir / ZRAN_META).read_bytes()
    header = _roundtrip(BlobMetaHeader, data, len(data) - 4096)
    assert (header.s_features, header.s_ci_entries, header.s_ci_zran_count) == (0xF, 163, 21)
    first = _roundtrip(ChunkInfoV2, data, 0)
    assert isinstance(first, ChunkInfoV2)
    assert (first.uncompressed_offset, first.uncompressed_size, first.flags) == (0, 1404, 3)
    assert (first.compressed_offset, first.compressed_size) == (184, 649)
    assert (first.data >> 32, first.data & 0xFFFFFFFF) == (0, 1024)
    for i in range(163):
        _roundtrip(ChunkInfoV2, data, 24 * i)
    for i in range(21):
        _roundtrip(ZranContext, data, header.s_ci_zran_offset + 40 * i)


def test_cli_lists_reads_and_checks_fixture(rafs: RafsRunner, fixtures_dir: Path) -> None:
    boot = str(fixtures_dir / BOOT)
    listing = rafs("ls", boot, "-l").stdout.decode().splitlines()
    sizes = {line.split()[-1]: int(line.split()[4]) for line in listing}
    assert sizes == {"lib.rs": 16931, "sync_io.rs": 13400}
    lib = rafs("cat", boot, "/lib.rs").stdout
    sync_io = rafs("cat", boot, "/sync_io.rs").stdout
    assert (len(lib), len(sync_io)) == (16931, 13400)
    assert blake3.blake3(lib).hexdigest() == LIB_RS_DIGEST
    assert blake3.blake3(sync_io).hexdigest() == SYNC_IO_DIGEST
    result = rafs("check", boot, "--blob-dir", str(fixtures_dir))
    assert "ok: 3 inodes, 2 chunks" in result.stdout.decode()


@pytest.mark.kernel
def test_fixture_exports_and_mounts_in_kernel(
    rafs: RafsRunner, fixtures_dir: Path, tmp_path: Path
) -> None:
    from tests.support.kernel import mount_erofs, require_kernel_erofs

    require_kernel_erofs()
    image = tmp_path / "image.erofs"
    rafs("export", "--block", str(fixtures_dir / BOOT), "-o", str(image))
    assert image.stat().st_size == 0x209 * 4096  # nydus block_device.rs: 0x209 blocks
    with mount_erofs(image, tmp_path / "mnt") as mnt:
        assert blake3.blake3((mnt / "lib.rs").read_bytes()).hexdigest() == LIB_RS_DIGEST
        assert (mnt / "sync_io.rs").stat().st_size == 13400
