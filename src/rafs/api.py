"""The converter API, in the shape of nydus-snapshotter's `pkg/converter`.

`pack` turns an OCI layer tar stream into a Nydus layer, `merge` stacks Nydus layers into
one bootstrap, `unpack` turns a Nydus layer or image back into an OCI tar. Options are
frozen dataclasses carrying the Go option fields that make sense in-process (no builder
path, work dir or timeout: there is no external builder).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from rafs.builder.layer import write_layer
from rafs.builder.merge import (
    MergeLayer,
    MergeOptions,
    blob_metas,
    merge_layers,
    write_bootstrap_tar,
)
from rafs.builder.options import DEFAULT_CHUNK_SIZE, BuildOptions
from rafs.builder.source import open_tar_stream
from rafs.codecs import COMPRESSOR_NAMES, DIGESTER_NAMES
from rafs.errors import InvalidArgument
from rafs.fileio import HashingWriter
from rafs.reader.artifact import open_artifact_reader
from rafs.reader.unpack import write_tar

Layer = MergeLayer  # Go `converter.Layer`: a digest and a ReaderAt


@dataclass(frozen=True)
class PackOption:
    """Go `PackOption`."""

    fs_version: str = "6"
    compressor: str = "zstd"
    digester: str = "blake3"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    chunk_dict_path: Path | None = None
    prefetch_patterns: tuple[str, ...] = ()


@dataclass(frozen=True)
class UnpackOption:
    """Go `UnpackOption`: where the blobs of a merged image are (a layer is its own blob)."""

    blob_dir: Path | None = None


@dataclass(frozen=True)
class MergeOption:
    """Go `MergeOption`; `whiteout_spec` is nydus-image's (Go always uses the OCI spec)."""

    fs_version: str = "6"
    prefetch_patterns: tuple[str, ...] = ("/",)
    with_tar: bool = False
    whiteout_spec: str = "oci"


def _build_options(option: PackOption) -> BuildOptions:
    if option.fs_version != "6":
        raise InvalidArgument(f"fs version {option.fs_version!r}: only RAFS v6 is written")
    try:
        compressor = COMPRESSOR_NAMES[option.compressor]
        digester = DIGESTER_NAMES[option.digester]
    except KeyError as exc:
        raise InvalidArgument(f"unknown compressor or digester {exc}") from None
    return BuildOptions(compressor=compressor, digester=digester, chunk_size=option.chunk_size,
                        prefetch_patterns=option.prefetch_patterns,
                        chunk_dict_path=option.chunk_dict_path)  # fmt: skip


def pack(src: IO[bytes], dest: BinaryIO, option: PackOption = PackOption(), *,
         name: str = "pack source") -> str:  # fmt: skip
    """Read an OCI layer tar (plain, gzip or zstd) from `src`, write the Nydus layer to `dest`;
    returns the layer digest. Errors name the source as `name`."""
    options = _build_options(option)
    with open_tar_stream(src) as tar:
        return write_layer(tar, HashingWriter(dest), options, name).digest


def merge(
    layers: Sequence[Layer], dest: BinaryIO, option: MergeOption = MergeOption()
) -> list[str]:
    """Merge the layers' bootstraps (lowest first) into `dest`, raw or as `image/image.boot`
    in a tar (`with_tar`); returns the digests of the blobs the merged bootstrap references."""
    if option.fs_version != "6":
        raise InvalidArgument(f"fs version {option.fs_version!r}: only RAFS v6 is written")
    result = merge_layers(layers, MergeOptions(option.whiteout_spec, option.prefetch_patterns))
    if option.with_tar:
        write_bootstrap_tar(result.bootstrap, dest, blob_metas(layers))
    else:
        dest.write(result.bootstrap)
    return result.blob_digests


def unpack(reader: BinaryIO, dest: BinaryIO, option: UnpackOption = UnpackOption()) -> None:
    """Write the OCI tar of the Nydus layer (or bootstrap) read from `reader` to `dest`."""
    with open_artifact_reader(reader, getattr(reader, "name", "unpack source"),
                              option.blob_dir) as artifact:  # fmt: skip
        write_tar(artifact, HashingWriter(dest))
