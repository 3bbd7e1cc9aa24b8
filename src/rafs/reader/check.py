"""Check a whole image: structure first, then every chunk of every blob.

Problems are collected, not raised, so one run reports all of them: the tree is walked
with cycle detection (a directory reachable twice is reported, not followed), dirents must
be sorted with "." and ".." correct, every inode must decode, link counts must be possible
(never 0; a file has at least as many links as names, and no more than the image has
names; a directory no more than 2 + its subdirectories), every regular file's chunks must
resolve in the chunk table and lie inside their blob without overlapping another chunk,
and every chunk is read, decompressed and verified against its digest and CRC-32C.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

from rafs.codecs import crc32c_of
from rafs.errors import RafsError
from rafs.format.chunktable import ChunkFlags, ChunkInfo
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


def _check_links(artifact: Artifact, names: dict[int, int], subdirs: dict[int, int],
                 report: CheckReport) -> None:  # fmt: skip
    """Link counts against what the walk found: `names` per non-directory, `subdirs` per
    directory."""
    image = artifact.image
    total = sum(names.values()) + sum(subdirs.values()) + 1
    for nid, count in sorted({**names, **subdirs}.items()):
        st = image.stat(nid)
        where = f"nid {nid}"
        if st.nlink == 0:
            report.problems.append(f"{where}: nlink is 0")
        elif nid in subdirs and st.nlink > 2 + count:
            report.problems.append(f"{where}: directory nlink {st.nlink}, but it has only "
                                   f"{count} subdirectories")  # fmt: skip
        elif nid in names and st.nlink < count:
            report.problems.append(f"{where}: reachable under {count} names, but nlink "
                                   f"is {st.nlink}")  # fmt: skip
        elif nid in names and st.nlink > total:
            report.problems.append(f"{where}: nlink {st.nlink} is more than the {total} "
                                   "names in the image")  # fmt: skip


def _check_tree(artifact: Artifact, report: CheckReport) -> None:
    image = artifact.image
    seen_dirs = {image.root_nid}
    seen: set[int] = set()
    links: dict[int, int] = {}  # non-directory nid -> names it has
    subdirs: dict[int, int] = {}  # directory nid -> its subdirectories
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
                found = 0  # subdirectories, recorded only when every entry reads
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
                        if not stat.S_ISDIR(child.mode):
                            links[entry.nid] = links.get(entry.nid, 0) + 1
                        else:
                            found += 1
                            if entry.nid in seen_dirs:
                                report.problems.append(
                                    f"{child_path.decode(errors='replace')}: directory "
                                    f"nid {entry.nid} is reachable twice (cycle)"
                                )
                                continue
                            seen_dirs.add(entry.nid)
                        stack.append((child_path, entry.nid, nid))
                subdirs[nid] = found
        except RafsError as exc:
            report.problems.append(f"{where}: {exc}")
    _check_links(artifact, links, subdirs, report)


def _report_overlaps(extents: list[tuple[int, int, ChunkInfo]], what: str, blob: int,
                     report: CheckReport) -> None:  # fmt: skip
    """(offset, size, chunk) extents sorted by offset: each may not start before the
    furthest end so far."""
    end, last = 0, None
    for offset, size, info in sorted(extents, key=lambda extent: extent[0]):
        if last is not None and offset < end:
            report.problems.append(f"chunk {info.block_id.hex()[:16]}: {what} bytes overlap "
                                   f"those of chunk {last.block_id.hex()[:16]} in blob "
                                   f"{blob}")  # fmt: skip
        if offset + size > end:
            end, last = offset + size, info


def _check_overlaps(artifact: Artifact, report: CheckReport) -> None:
    """Distinct chunks of one blob must not share bytes, stored or uncompressed (batch
    chunks share a stored frame by design)."""
    image = artifact.image
    for index in range(len(image.blobs)):
        chunks = [c for c in image.blob_chunks(index) if not c.flags & ChunkFlags.BATCH]
        _report_overlaps([(c.compressed_offset, c.compressed_size, c) for c in chunks],
                         "stored", index, report)  # fmt: skip
        _report_overlaps([(c.uncompressed_offset, c.uncompressed_size, c) for c in chunks],
                         "uncompressed", index, report)  # fmt: skip


def _check_chunks(artifact: Artifact, report: CheckReport) -> None:
    image = artifact.image
    # in the order they are stored: sequential reads of a file, or few large ranged requests
    for info in sorted(image.chunk_table(), key=lambda c: (c.blob_index, c.compressed_offset)):
        name = info.block_id.hex()[:16]
        try:
            info.validate()
            if info.blob_index >= len(image.blobs):
                raise RafsError(f"names missing blob {info.blob_index}")
            blob = image.blobs[info.blob_index]
            if info.uncompressed_offset + info.uncompressed_size > blob.uncompressed_size:
                raise RafsError("lies past the uncompressed end of its blob")
            if info.compressed_offset + info.compressed_size > blob.compressed_size:
                raise RafsError(f"[{info.compressed_offset}, +{info.compressed_size}) lies past "
                                f"the {blob.compressed_size} stored bytes of its blob")
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
    _check_overlaps(artifact, report)
    _check_chunks(artifact, report)
    return report
