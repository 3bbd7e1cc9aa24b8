"""Check a whole image: structure first, then every chunk of every blob.

Problems are collected, not raised, so one run reports all of them: the tree is walked
with cycle detection (a directory reachable twice is reported, not followed), dirents must
be sorted with "." and ".." correct, every inode must decode, every regular file's chunks
must resolve in the chunk table and lie inside their blob, and every chunk is read,
decompressed and verified against its digest and CRC-32C.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

from rafs.codecs import crc32c_of
from rafs.errors import RafsError
from rafs.format.chunktable import ChunkFlags
from rafs.format.inode import file_type_of_mode
from rafs.reader.artifact import Artifact


@dataclass
class CheckReport:
    """What `check_image` found."""

    inodes: int = 0
    chunks: int = 0
    chunk_bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_tree(artifact: Artifact, report: CheckReport) -> None:
    image = artifact.image
    seen_dirs = {image.root_nid}
    seen: set[int] = set()
    stack = [(b"/", image.root_nid, image.root_nid)]
    while stack:
        path, nid, parent = stack.pop()
        where = path.decode(errors="replace")
        try:
            st = image.stat(nid)
            if nid not in seen:
                seen.add(nid)
                report.inodes += 1
                image.xattrs(nid)
            if st.is_reg:
                infos = image.file_chunks(nid)
                for index, info in enumerate(infos):
                    expected = min(image.chunk_size, st.size - index * image.chunk_size)
                    if info.uncompressed_size != expected:
                        report.problems.append(f"{where}: chunk {index} holds "
                                               f"{info.uncompressed_size} bytes, expected "
                                               f"{expected}")  # fmt: skip
            elif st.is_symlink:
                image.readlink(nid)
            elif st.is_dir:
                entries = image.readdir(nid)
                names = [e.name for e in entries]
                if names != sorted(names):
                    report.problems.append(f"{where}: directory entries are not sorted")
                if names.count(b".") != 1 or names.count(b"..") != 1:
                    report.problems.append(f"{where}: directory lacks '.' or '..'")
                for entry in entries:
                    if entry.name == b"." and entry.nid != nid:
                        report.problems.append(f"{where}: '.' points at nid {entry.nid}")
                    elif entry.name == b".." and entry.nid != parent:
                        report.problems.append(f"{where}: '..' points at nid {entry.nid}")
                    elif entry.name not in (b".", b".."):
                        child_path = path.rstrip(b"/") + b"/" + entry.name
                        child = image.stat(entry.nid)
                        if entry.file_type != file_type_of_mode(child.mode):
                            report.problems.append(
                                f"{child_path.decode(errors='replace')}: dirent type "
                                f"{entry.file_type} does not match mode {child.mode:#o}"
                            )
                        if stat.S_ISDIR(child.mode):
                            if entry.nid in seen_dirs:
                                report.problems.append(
                                    f"{child_path.decode(errors='replace')}: directory "
                                    f"nid {entry.nid} is reachable twice (cycle)"
                                )
                                continue
                            seen_dirs.add(entry.nid)
                        stack.append((child_path, entry.nid, nid))
        except RafsError as exc:
            report.problems.append(f"{where}: {exc}")


def _check_chunks(artifact: Artifact, report: CheckReport) -> None:
    image = artifact.image
    for info in image.chunk_table():
        name = info.block_id.hex()[:16]
        try:
            info.validate()
            if info.blob_index >= len(image.blobs):
                raise RafsError(f"names missing blob {info.blob_index}")
            blob = image.blobs[info.blob_index]
            if info.uncompressed_offset + info.uncompressed_size > blob.uncompressed_size:
                raise RafsError("lies past the uncompressed end of its blob")
            data = artifact.blobs.read_chunk(info)
            if info.flags & ChunkFlags.HAS_CRC32 and crc32c_of(data) != info.crc32:
                raise RafsError("data does not match its CRC-32C")
            report.chunks += 1
            report.chunk_bytes += len(data)
        except RafsError as exc:
            report.problems.append(f"chunk {name}: {exc}")


def check_image(artifact: Artifact) -> CheckReport:
    """Check the structure and every chunk of an opened image."""
    report = CheckReport()
    _check_tree(artifact, report)
    _check_chunks(artifact, report)
    return report
