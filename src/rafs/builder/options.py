"""Build options, fixed for the whole of one build."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rafs.errors import InvalidArgument
from rafs.format.blobtable import Compressor, Digester

DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 1 << 12
MAX_CHUNK_SIZE = 1 << 24
WHITEOUT_SPECS = ("oci", "overlayfs", "none")


@dataclass(frozen=True)
class BuildOptions:
    """What `create` may vary; the defaults are those of the Go converter."""

    compressor: Compressor = Compressor.ZSTD
    digester: Digester = Digester.BLAKE3
    chunk_size: int = DEFAULT_CHUNK_SIZE
    whiteout_spec: str = "oci"
    fs_version: int = 6
    # The Go converter feeds `create` no patterns (its "/" default lands on a copy), so a
    # layer has no prefetch table unless asked; `merge` does get "/".
    prefetch_patterns: tuple[str, ...] = ()
    chunk_dict_path: Path | None = None  # bootstrap whose chunks are referenced, not stored

    def __post_init__(self) -> None:
        size = self.chunk_size
        if not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE or size & (size - 1):
            raise InvalidArgument(
                f"chunk size {size:#x} must be a power of two from 4 KiB to 16 MiB"
            )
        if self.whiteout_spec not in WHITEOUT_SPECS:
            raise InvalidArgument(f"whiteout spec {self.whiteout_spec!r} is not one of "
                                  f"{', '.join(WHITEOUT_SPECS)}")  # fmt: skip
        if self.fs_version != 6:
            raise InvalidArgument(f"fs version {self.fs_version}: only RAFS v6 is written")
