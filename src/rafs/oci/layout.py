"""OCI image layouts (image-spec image-layout.md): a directory of blobs with an index.

```
oci-layout          {"imageLayoutVersion": "1.0.0"}
index.json          an image index; entries tagged by `org.opencontainers.image.ref.name`
blobs/sha256/<hex>  content, named by the sha256 of its bytes
```

Reads are verified: a blob whose size or digest differs from its name or descriptor is an
`IntegrityError`. Writes are atomic: a blob is written to a temp file beside its final
name and renamed in only after its digest checked out; index.json is replaced the same way,
under an flock on the layout directory so concurrent taggers do not lose each other's entries.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from rafs.content import ClosesOnExit, Status
from rafs.digest import Digest, Digester
from rafs.errors import (
    AlreadyExists,
    FailedPrecondition,
    FormatError,
    IntegrityError,
    InvalidArgument,
    NotFound,
)
from rafs.fileio import AtomicHashingFile, write_atomic
from rafs.oci import constants as mt
from rafs.oci.descriptor import Descriptor
from rafs.oci.jsonfields import canonical_json, load_object
from rafs.oci.manifest import Index, Manifest

LAYOUT_FILE = "oci-layout"
LAYOUT_VERSION = "1.0.0"
INDEX_FILE = "index.json"
_BLOCK = 1 << 20


class OCILayout:
    """One image layout directory. `open` an existing one or `create` it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = f"oci:{root}"

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> OCILayout:
        layout = cls(Path(root))
        try:
            data = (layout.root / LAYOUT_FILE).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{layout.name}: not an OCI image layout (no oci-layout file)") from None
        header = load_object(data, f"{layout.name}: oci-layout")
        if header.get("imageLayoutVersion") != LAYOUT_VERSION:
            raise FormatError(f"{layout.name}: unsupported imageLayoutVersion "
                              f"{header.get('imageLayoutVersion')!r}")  # fmt: skip
        return layout

    @classmethod
    def create(cls, root: str | os.PathLike[str]) -> OCILayout:
        """Open the layout at `root`, first making an empty one if there is none."""
        path = Path(root)
        if not (path / LAYOUT_FILE).exists():
            (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            if not (path / INDEX_FILE).exists():
                write_atomic(path / INDEX_FILE, Index(manifests=()).to_bytes())
            write_atomic(path / LAYOUT_FILE, canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
        return cls.open(path)

    # Index and tags.

    def index(self) -> Index:
        try:
            data = (self.root / INDEX_FILE).read_bytes()
        except FileNotFoundError:
            raise FormatError(f"{self.name}: index.json is missing") from None
        return Index.from_bytes(data, f"{self.name}: index.json")

    def tags(self) -> list[str]:
        names = (d.annotations.get(mt.ANNOTATION_REF_NAME) for d in self.index().manifests)
        return [name for name in names if name]

    def resolve(self, tag: str | None = None) -> Descriptor:
        """The index entry tagged `tag`; without a tag, the only entry there is."""
        entries = self.index().manifests
        if tag is None:
            if len(entries) != 1:
                tags = ", ".join(self.tags()) or "none"
                raise InvalidArgument(f"{self.name}: holds {len(entries)} images; name one as "
                                      f"{self.name}:TAG (tags: {tags})")  # fmt: skip
            return entries[0]
        found = [d for d in entries if d.annotations.get(mt.ANNOTATION_REF_NAME) == tag]
        if not found:
            raise NotFound(f"{self.name}:{tag}: no such tag in index.json")
        if len(found) > 1:
            raise FormatError(f"{self.name}:{tag}: tag names {len(found)} index.json entries")
        return found[0]

    def tag(self, descriptor: Descriptor, tag: str | None) -> Descriptor:
        """Add `descriptor` to index.json, replacing whatever held `tag` before.

        Untagged, it is added unless an untagged entry with its digest is there already.
        Returns the entry as written (with its ref.name annotation).
        """
        if tag is not None:
            descriptor = replace(descriptor, annotations={**descriptor.annotations,
                                                          mt.ANNOTATION_REF_NAME: tag})  # fmt: skip
        with self._locked():
            index = self.index()
            kept = [d for d in index.manifests
                    if not _same_slot(d, descriptor, tag)]  # fmt: skip
            new_index = replace(index, manifests=(*kept, descriptor))
            write_atomic(self.root / INDEX_FILE, new_index.to_bytes())
        return descriptor

    def put_manifest(self, document: Manifest | Index, tag: str | None = None,
                     annotations: Mapping[str, str] | None = None) -> Descriptor:  # fmt: skip
        """Store a manifest or index (its blobs must be in already) and tag it."""
        data = document.to_bytes()
        missing = [d.digest for d in _children(document) if not self.has_blob(d.digest)]
        if missing:
            raise FailedPrecondition(f"{self.name}: manifest refers to missing blobs: "
                                     f"{', '.join(missing)}")  # fmt: skip
        digest = self.write_blob(data)
        descriptor = Descriptor(document.content_type, digest, len(data), dict(annotations or {}))
        return self.tag(descriptor, tag)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # Blobs.

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / Digest(digest).hex

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def open_blob(self, target: Descriptor | str) -> VerifyingReader:
        """A stream of the blob that raises `IntegrityError` at its end if the bytes are wrong."""
        digest = Digest(target.digest if isinstance(target, Descriptor) else target)
        size = target.size if isinstance(target, Descriptor) else None
        try:
            source = self.blob_path(digest).open("rb")
        except FileNotFoundError:
            raise NotFound(f"{self.name}: blob {digest} not found") from None
        return VerifyingReader(source, digest, size, f"{self.name}: blob {digest}")

    def read_blob(self, target: Descriptor | str, max_size: int | None = None) -> bytes:
        """The whole blob, verified; `max_size` refuses larger blobs (for manifests)."""
        with self.open_blob(target) as reader:
            if max_size is not None and os.fstat(reader.fileno()).st_size > max_size:
                raise FormatError(f"{reader.what}: larger than {max_size} bytes")
            return reader.read()

    def write_blob(self, source: bytes | BinaryIO, expected: str | None = None) -> Digest:
        """Store `source` (bytes or a stream), verified against `expected` if given."""
        try:
            writer = self.writer(expected=expected)
        except AlreadyExists:
            return Digest(str(expected))
        with writer:
            if isinstance(source, bytes):
                writer.write(source)
            else:
                while block := source.read(_BLOCK):
                    writer.write(block)
            digest = writer.digest()
            try:
                return writer.commit(expected=expected)
            except AlreadyExists:
                return digest

    def writer(self, ref: str = "", total: int = 0, expected: str | None = None) -> LayoutWriter:
        """A content-store style writer (`rafs.content.Writer`) adding one blob;
        `AlreadyExists` if the `expected` blob is there already."""
        if expected is not None and self.has_blob(expected):
            raise AlreadyExists(f"{self.name}: blob {expected} already exists")
        return LayoutWriter(self, ref or f"{self.name}:ingest", total)


def _children(document: Manifest | Index) -> list[Descriptor]:
    if isinstance(document, Index):
        return list(document.manifests)
    return [document.config, *document.layers]


def _same_slot(old: Descriptor, new: Descriptor, tag: str | None) -> bool:
    if tag is not None:
        return old.annotations.get(mt.ANNOTATION_REF_NAME) == tag
    return old.digest == new.digest and mt.ANNOTATION_REF_NAME not in old.annotations


class VerifyingReader(ClosesOnExit):
    """Read a blob through, checking its size and digest when the end is reached."""

    def __init__(self, source: BinaryIO, digest: Digest, size: int | None, what: str) -> None:
        self._source, self._digest, self._size, self.what = source, digest, size, what
        self._digester = Digester()

    def fileno(self) -> int:
        return self._source.fileno()

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        self._digester.update(data)
        if self._size is not None and self._digester.size > self._size:
            raise IntegrityError(f"{self.what}: longer than its size {self._size}")
        if not data or size < 0:
            self._verify()
        return data

    def _verify(self) -> None:
        if self._size is not None and self._digester.size != self._size:
            raise IntegrityError(f"{self.what}: {self._digester.size} bytes, want {self._size}")
        if self._digester.digest() != self._digest:
            raise IntegrityError(f"{self.what}: content has digest {self._digester.digest()}")

    def close(self) -> None:
        self._source.close()


class LayoutWriter(ClosesOnExit):
    """An ingest into a layout: a temp file in blobs/sha256, renamed to its digest on commit.

    Progress is not kept across writers (`close` without `commit` discards it), so a
    download into a layout restarts from zero.
    """

    def __init__(self, layout: OCILayout, ref: str, total: int) -> None:
        self._layout, self._ref, self._total = layout, ref, total
        self._started = datetime.now(UTC)
        self._file: AtomicHashingFile | None = self._new_file()

    def _new_file(self) -> AtomicHashingFile:
        return AtomicHashingFile(self._layout.root / "blobs" / "sha256" / "ingest")

    def _open_file(self) -> AtomicHashingFile:
        if self._file is None:
            raise FailedPrecondition(f"{self._ref}: writer is closed")
        return self._file

    @property
    def ref(self) -> str:
        return self._ref

    def write(self, data: bytes, /) -> int:
        return self._open_file().write(data)

    def digest(self) -> Digest:
        return Digest.from_hex(self._open_file().hexdigest())

    def status(self) -> Status:
        offset = self._open_file().tell()
        return Status(self._ref, offset, self._total, None, self._started, datetime.now(UTC))

    def truncate(self, size: int) -> None:
        if size != 0:
            raise InvalidArgument(f"{self._ref}: can only truncate to 0, not {size}")
        self._open_file().__exit__(None, None, None)
        self._file = self._new_file()

    def commit(self, size: int = 0, expected: str | None = None,
               labels: Mapping[str, str] | None = None) -> Digest:  # fmt: skip
        """Check size and digest, then rename into place; `labels` have no place in a layout."""
        out = self._open_file()
        try:
            digest = self.digest()
            if size and out.tell() != size:
                raise FailedPrecondition(f"{self._ref}: wrote {out.tell()} bytes, want {size}")
            if expected is not None and digest != Digest(expected):
                raise FailedPrecondition(f"{self._ref}: content has digest {digest}, "
                                         f"want {expected}")  # fmt: skip
            if self._layout.has_blob(digest):
                raise AlreadyExists(f"{self._layout.name}: blob {digest} already exists")
            out.path = self._layout.blob_path(digest)
            out.commit()
            return digest
        finally:
            self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.__exit__(None, None, None)
            self._file = None

