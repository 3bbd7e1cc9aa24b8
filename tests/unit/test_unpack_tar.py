"""Tar headers written by `rafs unpack`: ustar fields, the prefix split, PAX records.

Python's `tarfile` is the independent reader here; GNU tar judges whole trees in
tests/conformance/test_unpack.py.
"""

from __future__ import annotations

import io
import stat
import tarfile

import pytest

from rafs.reader import unpack
from rafs.reader.image import Stat


def _stat(mode: int = stat.S_IFREG | 0o644, uid: int = 0, gid: int = 0, mtime: int = 1,
          nsec: int = 0, rdev: tuple[int, int] = (0, 0)) -> Stat:  # fmt: skip
    return Stat(nid=1, mode=mode, uid=uid, gid=gid, size=0, mtime=mtime, mtime_nsec=nsec,
                nlink=1, rdev=rdev, layout=0, i_u=0, offset=0, body_offset=0,
                xattr_size=0)  # fmt: skip


def _read(*headers: bytes) -> list[tarfile.TarInfo]:
    data = b"".join(headers) + bytes(1024)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


@pytest.mark.parametrize(
    "name",
    [
        b"./" + b"a" * 98,  # exactly 100: the name field alone
        b"./" + b"a" * 99,  # 101, no usable '/': PAX path
        b"./" + b"d" * 150 + b"/" + b"f" * 100,  # 253: prefix 152 + name 100
        b"./" + b"d" * 153 + b"/" + b"f" * 100,  # 256: prefix 155 + name 100
        b"./" + b"d" * 154 + b"/" + b"f" * 100,  # 257: PAX path
        b"./" + b"d" * 120 + b"/" + b"f" * 101,  # the part after the '/' is too long
        b"./" + b"x/" * 70 + b"end",  # many slashes
        b"./caf\xc3\xa9/" + b"\xff\xfe" * 60,  # non-UTF-8 bytes survive
    ],
)
def test_names(name: bytes) -> None:
    header = unpack.tar_header(name, _stat(), unpack.REGTYPE)
    (member,) = _read(header)
    assert member.name.encode("utf-8", "surrogateescape") == name
    uses_pax = len(header) > 512
    fits_ustar = len(name) <= 100 or unpack._split_ustar(name) is not None
    assert uses_pax != fits_ustar


def test_directory_names_keep_their_slash_out_of_the_split() -> None:
    name = b"./" + b"d" * 100 + b"/"
    split = unpack._split_ustar(name)
    assert split is None  # never an empty name field: a PAX path instead
    (member,) = _read(unpack.tar_header(name, _stat(stat.S_IFDIR | 0o755), unpack.DIRTYPE))
    assert member.isdir() and member.name == "./" + "d" * 100


def test_long_link_target_and_big_ids() -> None:
    target = b"/" + b"t" * 200
    st = _stat(stat.S_IFLNK | 0o777, uid=2**21, gid=2**32 - 2, mtime=2**40, nsec=7)
    (member,) = _read(unpack.tar_header(b"./l", st, unpack.SYMTYPE, linkname=target))
    assert member.linkname == target.decode()
    assert (member.uid, member.gid) == (2**21, 2**32 - 2)
    assert member.pax_headers["mtime"] == "1099511627776.000000007"


def test_small_ids_and_whole_second_mtimes_need_no_pax() -> None:
    st = _stat(uid=2**21 - 1, gid=65534, mtime=4_102_444_800)
    header = unpack.tar_header(b"./f", st, unpack.REGTYPE)
    assert len(header) == 512
    (member,) = _read(header)
    assert (member.uid, member.gid, member.mtime) == (2**21 - 1, 65534, 4_102_444_800)


def test_huge_size_goes_to_pax() -> None:
    header = unpack.tar_header(b"./big", _stat(), unpack.REGTYPE, size=8 << 30)
    assert b" size=8589934592\n" in header
    assert header[-512 + 124 : -512 + 136] == b"00000000000\0"


def test_devices_and_xattrs() -> None:
    st = _stat(stat.S_IFCHR | 0o600, rdev=(240, 70000))
    xattrs = {b"user.a=b%c": b"\x00\xff\n=", b"security.capability": b"\x01" * 20}
    (member,) = _read(unpack.tar_header(b"./dev", st, unpack.CHRTYPE, xattrs=xattrs))
    assert member.ischr() and (member.devmajor, member.devminor) == (240, 70000)
    assert "SCHILY.xattr.user.a%3Db%25c" in member.pax_headers  # GNU tar's encoding
    assert "SCHILY.xattr.security.capability" in member.pax_headers


@pytest.mark.parametrize("size", range(1, 120))
def test_pax_record_length_counts_itself(size: int) -> None:
    record = unpack._pax_record(b"k", b"v" * size)
    length, _, rest = record.partition(b" ")
    assert int(length) == len(record) and rest == b"k=" + b"v" * size + b"\n"
