"""Open any Nydus artifact: a bootstrap file, a Nydus layer (blob with inlined bootstrap), or
a bootstrap layer (`image/image.boot` in a gzip tar, as `merge --tar` and MergeNydus store it).

RAFS v5 comes as a bootstrap file or as a layer: nydus-image writes a v5 layer without a ToC
(`--features blob-toc` is v6 only), its bootstrap raw in the last section, `image.boot`.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rafs.codecs import GZIP_MAGIC
from rafs.errors import FormatError, InvalidArgument, NotFound, Unsupported
from rafs.format.toc import SECTION_BOOTSTRAP
from rafs.format.v5 import is_rafs_v5
from rafs.oci.constants import NYDUS_BOOTSTRAP_NAME
from rafs.reader.blobs import BlobSet
from rafs.reader.image import RafsImage, is_rafs_v6
from rafs.reader.layer import ends_with_section, read_section, read_toc
from rafs.reader.v5 import RafsV5Image

MAX_BOOTSTRAP = 1 << 30


@dataclass
class Artifact:
    """An opened image: its metadata and its blobs."""

    image: RafsImage
    blobs: BlobSet
    layer: Path | None  # set when the artifact is a layer file

    def close(self) -> None:
        self.blobs.close()

    def __enter__(self) -> Artifact:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _require_file(path: Path) -> None:
    if path.is_dir():
        raise InvalidArgument(f"{path}: is a directory, not a bootstrap or Nydus layer file")
    if not path.is_file():
        raise NotFound(f"{path}: no such file")


def _read_bootstrap(f: BinaryIO, path: Path) -> bytes:
    """The whole of a bootstrap file, refusing absurd sizes."""
    size = f.seek(0, 2)
    if size > MAX_BOOTSTRAP:
        raise FormatError(f"{path}: bootstrap of {size} bytes is too large")
    f.seek(0)
    return f.read()


def open_v5(path: Path) -> RafsV5Image | None:
    """The RAFS v5 bootstrap file or v5 Nydus layer at `path` (a layer is its own data
    blob), or None when the file is anything else."""
    _require_file(path)
    with path.open("rb") as f:
        head = f.read(4096)
        if is_rafs_v5(head[:8]):
            return RafsV5Image(_read_bootstrap(f, path), str(path))
        if is_rafs_v6(head) or head.startswith(GZIP_MAGIC) or not ends_with_section(f):
            return None
        if read_toc(f, str(path)) is not None:
            return None
        try:
            bootstrap = read_section(f, SECTION_BOOTSTRAP, str(path))
        except NotFound:
            return None
    if not is_rafs_v5(bootstrap[:8]):
        return None
    return RafsV5Image(bootstrap, str(path), layer=path)


def open_artifact(path: Path, blob_dir: Path | None = None) -> Artifact:
    """Open a bootstrap file or a Nydus layer file."""
    _require_file(path)
    with path.open("rb") as f:
        image, is_layer = _read_image(f, str(path))
    if is_layer:
        return Artifact(image, BlobSet(image, path, blob_dir), path)
    return Artifact(image, BlobSet(image, None, blob_dir or path.parent), None)


def open_artifact_reader(f: BinaryIO, name: str, blob_dir: Path | None = None) -> Artifact:
    """Open a bootstrap or Nydus layer from a seekable reader (e.g. a content-store blob);
    the reader stays the caller's to close."""
    image, is_layer = _read_image(f, name)
    return Artifact(image, BlobSet(image, f if is_layer else None, blob_dir), None)


def _read_image(f: BinaryIO, name: str) -> tuple[RafsImage, bool]:
    """The v6 image in `f`, and whether `f` is a layer (its own data blob) or a bootstrap."""
    f.seek(0)
    head = f.read(4096)
    if is_rafs_v5(head[:8]):
        raise Unsupported(f"{name}: RAFS v5 bootstraps support only inspect, ls and cat")
    if is_rafs_v6(head):
        return RafsImage(_read_bootstrap(f, Path(name)), name), False
    if head.startswith(GZIP_MAGIC):
        return RafsImage(_bootstrap_from_gzip_tar(f, name), name), False
    if not ends_with_section(f):
        raise FormatError(f"{name}: neither a RAFS v6 bootstrap nor a Nydus layer "
                          "(it does not end with a section header)")  # fmt: skip
    try:
        bootstrap = read_section(f, SECTION_BOOTSTRAP, name)
    except NotFound:
        raise FormatError(f"{name}: neither a bootstrap nor a Nydus layer") from None
    if is_rafs_v5(bootstrap[:8]):
        raise Unsupported(f"{name}: RAFS v5 layers support only inspect, ls and cat")
    if not is_rafs_v6(bootstrap[:4096]):
        raise FormatError(f"{name}: the layer's image.boot is not a RAFS v6 bootstrap")
    return RafsImage(bootstrap, name), True


def _bootstrap_from_gzip_tar(f: BinaryIO, name: str) -> bytes:
    """`image/image.boot` of a gzip-compressed bootstrap layer tar."""
    f.seek(0)
    try:
        with tarfile.open(fileobj=f, mode="r|gz") as archive:
            for member in archive:
                if member.name.removeprefix("./") != NYDUS_BOOTSTRAP_NAME:
                    continue
                if not member.isfile() or member.size > MAX_BOOTSTRAP:
                    raise FormatError(f"{name}: {member.name} is not a bootstrap-sized file")
                stream = archive.extractfile(member)
                assert stream is not None
                bootstrap = stream.read()
                if not is_rafs_v6(bootstrap[:4096]):
                    raise FormatError(f"{name}: {member.name} is not a RAFS v6 bootstrap")
                return bootstrap
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise FormatError(f"{name}: a gzip file but not a bootstrap layer tar: {exc}") from None
    raise FormatError(f"{name}: gzip tar without {NYDUS_BOOTSTRAP_NAME}: not a bootstrap layer")
