"""Build multi-layer OCI images with the real `umoci` and read them back.

umoci (Debian package, 0.4.7 here) is the independent judge of overlay semantics: it writes
each layer as the diff between two root filesystems, and `umoci unpack` applies a layer
chain (whiteouts, opaque directories, hardlinks, metadata) to produce the reference tree.

How a layer is made:
- `edit_image()` unpacks the image into a bundle, lets the caller change `bundle/rootfs`
  freely (add, delete, replace, chmod, chown, setxattr), then `umoci repack` turns the
  difference into a new gzip layer. `add_layer_from_tree()` is that with a `cp -a` of a tree
  over the root filesystem.
- `add_raw_layer()` appends a hand-made tar verbatim (`umoci raw add-layer`), for entries
  repack never writes (see below).

What umoci 0.4.7 writes (checked on this machine, see oci/layer/generate.go and
tar_generate.go at tag v0.4.7):
- `repack` emits a changed or new path with its full content (tar cannot say "metadata
  only"), a deleted path as `DIR/.wh.NAME` (typeflag '0', size 0, mode 0, owner 0, mtime
  0), and a deleted directory as one `.wh.` entry, not one per descendant. It never emits
  the opaque marker `.wh..wh..opq`: a directory deleted and recreated becomes the new
  entries plus one `.wh.` per old child that is gone (a child recreated under the same name
  is written as a change). A directory replaced by a file or symlink becomes the new entry
  followed by `.wh.` entries *below* it (`dir2file`, `dir2file/.wh.child`), which `umoci
  unpack` ignores (ENOTDIR). A hardlink group is re-emitted in full whenever one name
  changes or a name is added or removed (nlink changed): the first name in path order as
  the file, the others as links to it.
- Parent directories are written only if they changed themselves, so upper layers often
  lack entries for the directories above their members; the root is written as `.` (mode,
  owner, mtime) when its own attributes or entries changed.
- mtimes are rounded to the nearest second (Go's archive/tar without PAX times);
  empty-valued xattrs and `security.selinux` are dropped; uname/gname are empty.
- `insert` writes tars without the end-of-archive blocks (and, for target `/`, a member
  named `/`): GNU tar and Python's tarfile call them truncated (umoci issue #436, fixed
  upstream by "generateinsertlayer: close the tarwriter", not in 0.4.7). So this module
  never uses `insert`; `insert --opaque` would be the only umoci command that writes
  `.wh..wh..opq`, which is why opaque directories come from `add_raw_layer()`.

What `umoci unpack` does (oci/layer/unpack.go, tar_extract.go): the root filesystem starts
as a directory made with mode 0755 (umask applies) and mtime set to the epoch; a `./`
entry then sets the root's mode, owner, mtime and xattrs like any directory. Parent
directory attributes are restored after each child is written, so every directory keeps
exactly the attributes of its last tar entry, and a directory no layer names keeps those
of the last layer that did. A whiteout never removes a path written by the same layer, and a
whiteout of a missing path is ignored. One trap for hand-made layers: a `.wh.NAME` entry
*after* a new NAME/ directory of the same layer deletes the old entries below it without
restoring its mtime, leaving the wall-clock time there; put whiteouts first.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


def require_umoci() -> None:
    """Fail the current test with an install hint unless `umoci` can run."""
    if shutil.which("umoci") is None:
        pytest.fail("umoci not found: apt-get install umoci", pytrace=False)


def umoci(*args: str | Path) -> str:
    """Run `umoci ARGS`; return stdout, or raise RuntimeError with umoci's stderr."""
    command = ["umoci", *(str(arg) for arg in args)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result.stdout


def new_image(layout: Path, tag: str) -> None:
    """Create the OCI layout if it does not exist yet and an empty image `tag` in it."""
    if not (layout / "index.json").exists():
        umoci("init", "--layout", layout)
    umoci("new", "--image", f"{layout}:{tag}")


def tag_image(layout: Path, tag: str, new_tag: str) -> None:
    """Make `new_tag` name the manifest `tag` names now (a snapshot of the layer chain)."""
    umoci("tag", "--image", f"{layout}:{tag}", new_tag)


def unpack_rootfs(layout: Path, tag: str, bundle: Path) -> Path:
    """`umoci unpack` the image into `bundle` (which must not exist); return its rootfs."""
    umoci("unpack", "--image", f"{layout}:{tag}", bundle)
    return bundle / "rootfs"


@contextlib.contextmanager
def edit_image(layout: Path, tag: str, bundle: Path) -> Iterator[Path]:
    """Unpack the image to `bundle`, yield its rootfs to change, then repack it as a new layer.

    The new layer holds exactly what changed (see the module docstring for how umoci writes
    it). Nothing is repacked if the body raises. The bundle is removed afterwards.
    """
    rootfs = unpack_rootfs(layout, tag, bundle)
    try:
        yield rootfs
        umoci("repack", "--no-history", "--image", f"{layout}:{tag}", bundle)
    finally:
        shutil.rmtree(bundle, ignore_errors=True)


def add_layer_from_tree(layout: Path, tag: str, tree_dir: Path, bundle: Path) -> None:
    """Add a layer that lays `tree_dir` over the image (cp -a: modes, owners, times, xattrs,
    hardlinks and the root directory's own attributes).

    Done with unpack + copy + repack rather than `umoci insert`, whose 0.4.7 tars are
    unterminated. `bundle` is scratch space (must not exist).
    """
    with edit_image(layout, tag, bundle) as rootfs:
        subprocess.run(["cp", "-a", f"{tree_dir}/.", f"{rootfs}/"], check=True)


def add_raw_layer(layout: Path, tag: str, tar: Path) -> None:
    """Append an uncompressed tar verbatim as the next layer (umoci gzips it)."""
    umoci("raw", "add-layer", "--no-history", "--image", f"{layout}:{tag}", tar)


def manifest(layout: Path, tag: str) -> dict[str, object]:
    """The image manifest that `tag` names in the layout's index."""
    index = json.loads((layout / "index.json").read_text())
    for descriptor in index["manifests"]:
        annotations = descriptor.get("annotations") or {}
        if annotations.get(REF_NAME) == tag:
            if descriptor["mediaType"] != MANIFEST_MEDIA_TYPE:
                raise ValueError(f"{layout}:{tag} is a {descriptor['mediaType']}")
            found: dict[str, object] = json.loads(
                blob_path(layout, descriptor["digest"]).read_text()
            )
            return found
    raise KeyError(f"no tag {tag!r} in {layout}/index.json")


def blob_path(layout: Path, digest: str) -> Path:
    """Where a blob `sha256:<hex>` lives in an OCI layout."""
    algorithm, _, hex_digest = digest.partition(":")
    return layout / "blobs" / algorithm / hex_digest


def layer_tars(layout: Path, tag: str) -> list[Path]:
    """The image's layer blobs (gzip tars as umoci writes them), lowest first."""
    layers = manifest(layout, tag)["layers"]
    assert isinstance(layers, list)
    return [blob_path(layout, layer["digest"]) for layer in layers]


@dataclass(frozen=True)
class Member:
    """One tar member as a layer holds it (name as stored, trailing slash removed)."""

    name: str
    kind: str
    """reg, dir, lnk (symlink), hardlink, chr, blk, fifo."""
    mode: int
    uid: int
    gid: int
    mtime: int
    linkname: str
    xattrs: tuple[str, ...]

    @property
    def is_whiteout(self) -> bool:
        return self.name.rsplit("/", 1)[-1].startswith(".wh.")


_TAR_KINDS = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "lnk",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "chr",
    tarfile.BLKTYPE: "blk",
    tarfile.FIFOTYPE: "fifo",
}


def list_layer(tar: Path) -> list[Member]:
    """The members of a layer tar (gzip or plain), in stream order."""
    with tar.open("rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if compressed else open
    with opener(tar, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as archive:
        return [
            Member(
                name=info.name,
                kind=_TAR_KINDS.get(info.type, repr(info.type)),
                mode=info.mode,
                uid=info.uid,
                gid=info.gid,
                mtime=int(info.mtime),
                linkname=info.linkname,
                xattrs=tuple(
                    sorted(
                        key.removeprefix("SCHILY.xattr.")
                        for key in info.pax_headers
                        if key.startswith("SCHILY.xattr.")
                    )
                ),
            )
            for info in archive
        ]
