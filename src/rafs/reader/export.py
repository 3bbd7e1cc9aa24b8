"""Export a Nydus image in forms the Linux kernel's EROFS driver mounts directly.

`export_block` writes one flat EROFS image (nydus-image `export --block`): the bootstrap's
blocks, then each blob's *uncompressed* data at the block its device slot names
(`mapped_blkaddr`). With no `device=` option the kernel reads chunk data from the primary
device at `(mapped_blkaddr + startblk) * block_size`. Bootstraps from nydus v2.2, which wrote
`mapped_blkaddr` 0, get slots laid out here (512 KiB aligned) in the exported copy.

`export_blob_data` writes one blob's uncompressed data alone (the nydusd cache file
`<blob_id>.blob.data`): the bootstrap mounts with `-o device=` naming it.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from rafs.errors import FormatError
from rafs.format.record import align_up
from rafs.format.superblock import DEVICE_SLOT_SIZE
from rafs.reader.artifact import Artifact

MAPPED_BLKADDR_ALIGN = 0x8_0000


def _write_chunks(artifact: Artifact, blob_index: int, out: BinaryIO, base: int) -> None:
    """Write every chunk of one blob at `base` + its uncompressed offset, in blob order."""
    image = artifact.image
    blob = image.blobs[blob_index]
    for info in image.blob_chunks(blob_index):
        if info.uncompressed_offset + info.uncompressed_size > blob.uncompressed_size:
            raise FormatError(f"{image.source}: chunk {info.block_id.hex()[:16]} lies past "
                              "the end of its blob")  # fmt: skip
        out.seek(base + info.uncompressed_offset)
        out.write(artifact.blobs.read_chunk(info))


def _replace_atomically(output: Path) -> tuple[BinaryIO, Path]:
    temp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    return temp.open("wb"), temp


def export_block(artifact: Artifact, output: Path) -> int:
    """Write the flat block image; returns its size in bytes."""
    image = artifact.image
    bs = image.block_size
    bootstrap = bytearray(image.data)
    position = len(bootstrap)
    placements = []
    slot_base = image.superblock.s_devt_slotoff * DEVICE_SLOT_SIZE
    for index, slot in enumerate(image.devices):
        blkaddr = slot.mapped_blkaddr or align_up(position, MAPPED_BLKADDR_ALIGN) // bs
        if blkaddr * bs < position:
            raise FormatError(f"{image.source}: blob {index} is mapped over earlier data")
        if slot.mapped_blkaddr == 0:
            at = slot_base + DEVICE_SLOT_SIZE * index
            bootstrap[at : at + DEVICE_SLOT_SIZE] = replace(slot, mapped_blkaddr=blkaddr).pack()
        placements.append(blkaddr)
        position = (blkaddr + slot.blocks) * bs
    out, temp = _replace_atomically(output)
    try:
        with out:
            out.write(bootstrap)
            for index, blkaddr in enumerate(placements):
                _write_chunks(artifact, index, out, blkaddr * bs)
            out.truncate(position)
            os.fsync(out.fileno())
        os.replace(temp, output)
    finally:
        temp.unlink(missing_ok=True)
    return position


def export_blob_data(artifact: Artifact, blob_index: int, output: Path) -> None:
    """Write one blob's uncompressed data (its device image for `-o device=`)."""
    blob = artifact.image.blobs[blob_index]
    out, temp = _replace_atomically(output)
    try:
        with out:
            _write_chunks(artifact, blob_index, out, 0)
            out.truncate(align_up(blob.uncompressed_size, artifact.image.block_size))
            os.fsync(out.fileno())
        os.replace(temp, output)
    finally:
        temp.unlink(missing_ok=True)
