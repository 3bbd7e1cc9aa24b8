"""Small tar layers made in memory for tests."""

from __future__ import annotations

import io
import tarfile


def make_tar(entries: list[tuple[str, bytes | None, dict[str, object]]],
             fmt: int = tarfile.PAX_FORMAT) -> bytes:  # fmt: skip
    """A tar (PAX unless `fmt` says otherwise) of (name, data or None for a directory,
    TarInfo attributes)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for name, data, attrs in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if data is None and "type" not in attrs:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
            for key, value in attrs.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()
