"""Damaging bootstraps on purpose, for tests of what the reader, check and mounts do then."""

from __future__ import annotations

from rafs.format.dirent import Dirent, unpack_dirent_block
from rafs.format.inode import DataLayout
from rafs.reader.image import RafsImage


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
