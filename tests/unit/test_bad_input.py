"""Bad input never crashes the command line.

Truncated and bit-flipped bootstraps and layers, wrong chunk digests, a blob shorter than its
table says, a directory cycle, tar names that climb out of the layer, files that are not
Nydus at all: every run ends (no hang) with exit 0, 1 (a check found problems) or the exit
code of one error kind, and a failure is one line on stderr, `rafs: ...`, naming the input.

The bulk sweeps call `rafs.cli.main` in-process (thousands of runs); a representative
handful runs `python -m rafs` as a subprocess with a timeout.
"""

from __future__ import annotations

import io
import os
import random
import signal
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest

from rafs import cli as rafs_cli
from rafs.errors import FormatError, IntegrityError, InvalidArgument, NotFound, RafsError
from rafs.format.chunktable import ChunkInfo
from rafs.format.toc import SECTION_BLOB, SECTION_BOOTSTRAP, TAR_BLOCK, TocEntry
from rafs.reader.artifact import open_artifact
from rafs.reader.image import RafsImage
from rafs.reader.layer import read_toc
from tests.conftest import RafsRunner
from tests.support.patching import redirect_dirent

SUBPROCESS_TIMEOUT = 30.0
IN_PROCESS_TIMEOUT = 10.0


def _kinds(cls: type[RafsError]) -> Iterator[type[RafsError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _kinds(sub)


# 0 success, 1 a check found problems, else one error kind's code; never 10 (a RafsError of
# no kind), 11 (an OSError leaking out of corrupt input), a signal or a traceback.
ALLOWED_CODES = {0, 1} | {kind.exit_code for kind in _kinds(RafsError)}

BIG = random.Random(6).randbytes(30_000) + b"a" * 1_100_000  # two chunks, both zstd frames
HOSTS = b"127.0.0.1 localhost\n"
CERT = b"-----BEGIN CERTIFICATE-----\n" * 40
SMALL = b"hello\n"


@dataclass(frozen=True)
class Sample:
    """A small layer and its bootstrap, with the blob under its id in `blob_dir`."""

    tar: Path
    layer: Path
    boot: Path
    blob_dir: Path
    blob_id: str

    @property
    def blob(self) -> Path:
        return self.blob_dir / self.blob_id


def _add(
    tar: tarfile.TarFile,
    name: str,
    data: bytes = b"",
    kind: bytes = tarfile.REGTYPE,
    link: str = "",
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = kind, link, 1_700_000_000
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _write_tar(path: Path, names: Sequence[tuple[str, bytes]] = ()) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "etc", kind=tarfile.DIRTYPE)
        _add(tar, "etc/hosts", HOSTS)
        _add(tar, "etc/ssl", kind=tarfile.DIRTYPE)
        _add(tar, "etc/ssl/cert.pem", CERT)
        _add(tar, "big", BIG)
        _add(tar, "small", SMALL)
        _add(tar, "link", kind=tarfile.SYMTYPE, link="etc/hosts")
        for name, data in names:
            _add(tar, name, data)
    return path


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory, rafs: RafsRunner) -> Sample:
    root = tmp_path_factory.mktemp("bad-input")
    tar = _write_tar(root / "src.tar")
    layer, boot = root / "layer", root / "boot"
    digest = rafs("create", tar, "-o", layer, "--bootstrap", boot).stdout.decode().strip()
    blob_id = digest.removeprefix("sha256:")
    blob_dir = root / "blobs"
    blob_dir.mkdir()
    (blob_dir / blob_id).write_bytes(layer.read_bytes())
    return Sample(tar, layer, boot, blob_dir, blob_id)


# -- running the command line and judging one run ------------------------------------------

Cli = Callable[..., tuple[int, bytes, str]]
"""Type of the `cli` fixture: cli(*argv) -> (exit code, stdout, stderr), run in-process."""


class Hang(Exception):
    """An in-process run outlived IN_PROCESS_TIMEOUT."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang


@pytest.fixture
def cli(capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """`rafs.cli.main` in this process, thousands of times a second; a hang fails the test."""
    parser = rafs_cli.make_parser()  # building it costs more than most runs: build it once
    monkeypatch.setattr(rafs_cli, "make_parser", lambda command=None: parser)

    def run(*argv: str | Path) -> tuple[int, bytes, str]:
        # The test's own alarm (pytest-timeout) waits while this one runs, then goes on.
        previous = signal.signal(signal.SIGALRM, _alarm)
        test_left, _ = signal.setitimer(signal.ITIMER_REAL, IN_PROCESS_TIMEOUT)
        started = time.monotonic()
        try:
            code = rafs_cli.main([os.fspath(arg) for arg in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except Hang:
            pytest.fail(f"rafs {' '.join(map(str, argv))} hung (> {IN_PROCESS_TIMEOUT} s)")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if test_left:
                left = max(test_left - (time.monotonic() - started), 0.001)
                signal.setitimer(signal.ITIMER_REAL, left)
        out, err = capsysbinary.readouterr()
        return code, out, err.decode(errors="replace")

    return run


def assert_clean(code: int, stderr: str, names: Sequence[str | Path], what: str) -> None:
    """The rules for any run: an allowed code; failures are `rafs: ` lines naming an input.

    Exit 1 (a check's verdict) may report several problems, one line each; any other
    failure is exactly one line.
    """
    names = [os.fspath(name) for name in names]
    assert "Traceback" not in stderr, f"{what}: traceback\n{stderr}"
    assert code in ALLOWED_CODES, f"{what}: exit {code}\n{stderr}"
    if code == 0:
        return
    lines = stderr.splitlines()
    assert lines, f"{what}: exit {code} without a message"
    if code != 1:
        assert len(lines) == 1, f"{what}: exit {code} with {len(lines)} lines\n{stderr}"
    for line in lines:
        assert line.startswith("rafs: "), f"{what}: {line!r}"
        assert any(name in line for name in names), f"{what}: names no input: {line!r}"


LS, INSPECT, CHECK, CAT = "ls", "inspect", "check", "cat"


def _argv(command: str, image: Path, blob_dir: Path | None) -> list[str | Path]:
    extra: list[str | Path] = ["--blob-dir", blob_dir] if blob_dir else []
    return {
        LS: [LS, image, "-R", "-l"],
        INSPECT: [INSPECT, image],
        CHECK: [CHECK, image, *extra],
        CAT: [CAT, image, "/big", *extra],
    }[command]


def sweep(
    cli: Cli,
    variants: Iterable[tuple[int, bytes]],
    target: Path,
    commands: Sequence[str],
    blob_dir: Path | None = None,
) -> dict[int, list[int]]:
    """Run the commands on every variant of a file: {variant key: [exit code per command]}.

    Every run is judged by `assert_clean`; the caller judges which variants must fail.
    """
    names = [target] + ([blob_dir] if blob_dir else [])
    codes: dict[int, list[int]] = {}
    for key, data in variants:
        target.write_bytes(data)
        codes[key] = []
        for command in commands:
            code, _, err = cli(*_argv(command, target, blob_dir))
            assert_clean(code, err, names, f"{target.name} variant {key}: rafs {command}")
            codes[key].append(code)
    return codes


def _flip(data: bytes, position: int, bit: int | None = None) -> bytes:
    out = bytearray(data)
    out[position] ^= 1 << (position % 8 if bit is None else bit)
    return bytes(out)


def truncations(data: bytes, lengths: Iterable[int]) -> Iterator[tuple[int, bytes]]:
    """(length, data cut to that length) for each distinct length shorter than the data."""
    for length in sorted({n for n in lengths if 0 <= n < len(data)}):
        yield length, data[:length]


def flips(data: bytes, positions: Iterable[int]) -> Iterator[tuple[int, bytes]]:
    """(position, data with one bit of that byte flipped), a different bit as we go."""
    for position in positions:
        yield position, _flip(data, position)


def failed(codes: dict[int, list[int]]) -> set[int]:
    """Variants on which every command failed."""
    return {key for key, results in codes.items() if all(results)}


# -- bootstraps ----------------------------------------------------------------------------

ALL = (LS, INSPECT, CHECK, CAT)


def test_bootstrap_truncated(cli: Cli, sample: Sample, tmp_path: Path) -> None:
    data = sample.boot.read_bytes()
    lengths = [0, 1, 100, 1024, 1028, 1100, 1152, 1408, 4095, 4096, 4097, len(data) // 2,
               len(data) - 4096, len(data) - 512, len(data) - 1,
               *range(4096, len(data), 4096)]  # fmt: skip
    codes = sweep(cli, truncations(data, lengths), tmp_path / "boot", ALL, sample.blob_dir)
    # Short of one block, or not whole blocks: no command can read it.
    assert failed(codes) >= {n for n in codes if n <= 4096 or n % 4096}


def test_bootstrap_superblock_bit_flips(cli: Cli, sample: Sample, tmp_path: Path) -> None:
    """Every byte of the EROFS superblock and the RAFS extended superblock (1024..1408)."""
    data = sample.boot.read_bytes()
    codes = sweep(cli, flips(data, range(1024, 1408)), tmp_path / "boot", ALL, sample.blob_dir)
    # Magic, checksum, block size, extension slots, xattr area, incompatible features, device
    # count and table, blob table size and chunk size: any flip there is refused.
    must_fail = {*range(1024, 1032), 1036, 1037, *range(1068, 1072), *range(1104, 1108),
                 *range(1110, 1114), *range(1168, 1176)}  # fmt: skip
    assert failed(codes) >= must_fail


def test_bootstrap_bit_flips_everywhere(cli: Cli, sample: Sample, tmp_path: Path) -> None:
    """Every 7th byte of the whole bootstrap: inodes, dirents, xattrs, tables."""
    data = sample.boot.read_bytes()
    codes = sweep(
        cli,
        flips(data, range(0, len(data), 7)),
        tmp_path / "boot",
        (LS, INSPECT, CHECK),
        sample.blob_dir,
    )
    assert failed(codes)


def test_bootstrap_chunk_table_bit_flips(cli: Cli, sample: Sample, tmp_path: Path) -> None:
    """Every byte of the chunk table, read through `check` and `cat`."""
    data = sample.boot.read_bytes()
    ext = RafsImage(data, "boot").ext
    table = range(ext.s_chunk_table_offset, ext.s_chunk_table_offset + ext.s_chunk_table_size)
    codes = sweep(cli, flips(data, table), tmp_path / "boot", (CHECK, CAT), sample.blob_dir)
    # Every flip of a digest byte (the first 32 of each 80-byte entry) is caught by check.
    digests = {p for p in table if (p - table.start) % ChunkInfo.SIZE < 32}
    assert {p for p, (check, _) in codes.items() if check} >= digests


# -- layers --------------------------------------------------------------------------------


def _sections(layer: Path) -> dict[bytes, TocEntry]:
    with layer.open("rb") as f:
        entries = read_toc(f, str(layer))
    assert entries is not None
    return {entry.section: entry for entry in entries}


def test_layer_truncated(cli: Cli, sample: Sample, tmp_path: Path) -> None:
    data = sample.layer.read_bytes()
    boot = _sections(sample.layer)[SECTION_BOOTSTRAP]
    lengths = [0, 1, 100, 511, 512, 1024, 1100, 4096, len(data) // 2, len(data) - 1,
               len(data) - TAR_BLOCK, len(data) - TAR_BLOCK - 1, boot.compressed_offset,
               boot.compressed_offset + boot.compressed_size,
               *range(len(data) - 20_000, len(data), 487)]  # fmt: skip
    codes = sweep(cli, truncations(data, lengths), tmp_path / "layer", ALL)
    assert failed(codes) == set(codes)  # a layer is read from its end: any cut is fatal


def test_layer_toc_and_bootstrap_bit_flips(cli: Cli, sample: Sample, tmp_path: Path) -> None:
    """The ToC and the tar headers around it byte by byte, the inlined image.boot sampled."""
    data = sample.layer.read_bytes()
    sections = _sections(sample.layer)
    boot = sections[SECTION_BOOTSTRAP]
    toc_start = len(data) - TAR_BLOCK - TocEntry.SIZE * len(sections)
    tail = range(toc_start - TAR_BLOCK, len(data))
    inlined = range(boot.compressed_offset, boot.compressed_offset + boot.compressed_size, 29)
    codes = sweep(cli, flips(data, [*tail, *inlined]), tmp_path / "layer", (LS, INSPECT, CHECK))
    # The ToC digest covers the inlined bootstrap: no flip inside it gets through.
    assert failed(codes) >= set(inlined)


def test_layer_chunk_data_bit_flips(cli: Cli, sample: Sample, tmp_path: Path) -> None:
    """Flips spread across the blob data: check catches every one, naming the chunk."""
    data = sample.layer.read_bytes()
    blob = _sections(sample.layer)[SECTION_BLOB]
    target = tmp_path / "layer"
    end = blob.compressed_offset + blob.compressed_size
    for position in range(blob.compressed_offset, end, blob.compressed_size // 40):
        target.write_bytes(_flip(data, position))
        code, _, err = cli(CHECK, target)
        assert_clean(code, err, [target], f"flip at {position}: check")
        assert code == 1, f"flip at {position} not caught by check"
        assert "chunk" in err


def _chunk_of(image: Path, path: str) -> ChunkInfo:
    with open_artifact(image) as artifact:
        return artifact.image.file_chunks(artifact.image.lookup(path))[0]


def test_flipped_chunk_fails_check_and_cat_of_that_file_only(
    rafs: RafsRunner, sample: Sample, tmp_path: Path
) -> None:
    chunk = _chunk_of(sample.layer, "/big")
    layer = tmp_path / "layer"
    middle = chunk.compressed_offset + chunk.compressed_size // 2
    layer.write_bytes(_flip(sample.layer.read_bytes(), middle))
    name = chunk.block_id.hex()[:16]

    result = rafs("check", layer, check=False, timeout=SUBPROCESS_TIMEOUT)
    assert_clean(result.returncode, result.stderr, [layer], "check")
    assert result.returncode == 1
    assert f"chunk {name}" in result.stderr
    assert b"1 problem(s)" in result.stdout

    result = rafs("cat", layer, "/big", check=False, timeout=SUBPROCESS_TIMEOUT)
    assert_clean(result.returncode, result.stderr, [layer], "cat /big")
    assert result.returncode == IntegrityError.exit_code
    assert f"chunk {name}" in result.stderr

    for path, content in [("/small", SMALL), ("/etc/hosts", HOSTS), ("/etc/ssl/cert.pem", CERT)]:
        assert rafs("cat", layer, path, timeout=SUBPROCESS_TIMEOUT).stdout == content


def test_wrong_chunk_digest_in_bootstrap(rafs: RafsRunner, sample: Sample, tmp_path: Path) -> None:
    """Edit one digest in the chunk table, recompute nothing: check and cat catch it."""
    data = bytearray(sample.boot.read_bytes())
    ext = RafsImage(bytes(data), "boot").ext
    target = _chunk_of(sample.layer, "/small")
    table = range(ext.s_chunk_table_offset, ext.s_chunk_table_offset + ext.s_chunk_table_size)
    for offset in table[:: ChunkInfo.SIZE]:
        if ChunkInfo.unpack(data, offset) == target:
            data[offset + 5] ^= 0xFF  # inside block_id, the first field
            break
    else:
        pytest.fail("chunk of /small not in the chunk table")
    boot = tmp_path / "boot"
    boot.write_bytes(data)
    blobs = ["--blob-dir", sample.blob_dir]

    result = rafs("check", boot, *blobs, check=False, timeout=SUBPROCESS_TIMEOUT)
    assert_clean(result.returncode, result.stderr, [boot, sample.blob], "check")
    assert result.returncode == 1
    assert "does not match the chunk digest" in result.stderr
    assert len(result.stderr.splitlines()) == 1

    result = rafs("cat", boot, "/small", *blobs, check=False, timeout=SUBPROCESS_TIMEOUT)
    assert_clean(result.returncode, result.stderr, [boot, sample.blob], "cat")
    assert result.returncode == IntegrityError.exit_code
    assert rafs("cat", boot, "/big", *blobs).stdout == BIG


def test_blob_shorter_than_its_table_says(rafs: RafsRunner, sample: Sample, tmp_path: Path) -> None:
    blob_size = _sections(sample.layer)[SECTION_BLOB].compressed_size
    blob_dir = tmp_path / "blobs"
    blob_dir.mkdir()
    short = blob_dir / sample.blob_id
    short.write_bytes(sample.layer.read_bytes()[: blob_size - 1000])
    blobs = ["--blob-dir", blob_dir]

    result = rafs("cat", sample.boot, "/big", *blobs, check=False, timeout=SUBPROCESS_TIMEOUT)
    assert_clean(result.returncode, result.stderr, [short], "cat")
    assert result.returncode == FormatError.exit_code
    assert "shorter than" in result.stderr

    result = rafs("check", sample.boot, *blobs, check=False, timeout=SUBPROCESS_TIMEOUT)
    assert_clean(result.returncode, result.stderr, [sample.boot], "check")
    assert result.returncode == 1
    assert "shorter than" in result.stderr


def test_missing_blob(rafs: RafsRunner, sample: Sample, tmp_path: Path) -> None:
    result = rafs(
        "cat", sample.boot, "/big", "--blob-dir", tmp_path, check=False, timeout=SUBPROCESS_TIMEOUT
    )
    assert_clean(result.returncode, result.stderr, [sample.boot], "cat")
    assert result.returncode == NotFound.exit_code
    assert sample.blob_id in result.stderr


# -- bad tars for create -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escape", "etc/../../escape", "/etc/passwd", "/"])
def test_create_refuses_names_outside_the_layer(
    rafs: RafsRunner, tmp_path: Path, name: str
) -> None:
    tar = _write_tar(tmp_path / "bad.tar", [(name, b"x")])
    out = tmp_path / "out"
    out.mkdir()
    result = rafs(
        "create", tar, "-o", out / "layer", "--bootstrap", out / "boot",
        check=False, timeout=SUBPROCESS_TIMEOUT,
    )  # fmt: skip
    assert_clean(result.returncode, result.stderr, [tar], "create")
    assert result.returncode == FormatError.exit_code
    assert name in result.stderr
    assert list(out.iterdir()) == [], "create left files behind"


# -- not an image at all -------------------------------------------------------------------


def test_missing_image(rafs: RafsRunner, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    for argv in (
        ["ls", missing],
        ["check", missing],
        ["cat", missing, "/x"],
        ["create", missing, "-o", tmp_path / "out"],
    ):
        result = rafs(*argv, check=False, timeout=SUBPROCESS_TIMEOUT)
        assert_clean(result.returncode, result.stderr, [missing], str(argv[0]))
        assert result.returncode == NotFound.exit_code


def test_directory_as_image(rafs: RafsRunner, tmp_path: Path) -> None:
    result = rafs("inspect", tmp_path, check=False, timeout=SUBPROCESS_TIMEOUT)
    assert_clean(result.returncode, result.stderr, [tmp_path], "inspect")
    assert result.returncode == InvalidArgument.exit_code
    assert "directory" in result.stderr


def test_files_that_are_not_nydus(cli: Cli, sample: Sample, tmp_path: Path) -> None:
    rng = random.Random(1)
    inputs = {
        "empty": b"",
        "random-small": rng.randbytes(300),
        "random": rng.randbytes(20_000),
        "plain.tar": sample.tar.read_bytes(),
        "zeros": bytes(8192),
        "erofs-magic-only": bytes(1024) + (0xE0F5E1E2).to_bytes(4, "little") + bytes(3068),
        "v5-magic": b"SFAR" + bytes(8188),
    }
    for name, data in inputs.items():
        path = tmp_path / name
        path.write_bytes(data)
        for argv in (["ls", path, "-R"], ["inspect", path], ["check", path]):
            code, _, err = cli(*argv)
            assert_clean(code, err, [path], f"{name}: {argv[0]}")
            assert code in (FormatError.exit_code, 7), f"{name}: {argv[0]}: exit {code}"


def test_not_nydus_as_subprocess(rafs: RafsRunner, sample: Sample, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(random.Random(2).randbytes(5000))
    for path in (junk, sample.tar):
        result = rafs("ls", path, check=False, timeout=SUBPROCESS_TIMEOUT)
        assert_clean(result.returncode, result.stderr, [path], "ls")
        assert result.returncode == FormatError.exit_code
        assert "neither" in result.stderr


# -- loops the reader must not fall into ---------------------------------------------------


@pytest.mark.parametrize("target", ["/", "/etc"])
def test_directory_cycle(rafs: RafsRunner, sample: Sample, tmp_path: Path, target: str) -> None:
    """/etc/ssl points back at the root (or at /etc): ls -R and check end with a report."""
    data = sample.boot.read_bytes()
    nid = RafsImage(data, "boot").lookup(target)
    boot = tmp_path / "boot"
    boot.write_bytes(redirect_dirent(data, "/etc", b"ssl", nid))

    result = rafs("ls", boot, "-R", check=False, timeout=SUBPROCESS_TIMEOUT)
    assert_clean(result.returncode, result.stderr, [boot], "ls -R")
    assert result.returncode == FormatError.exit_code
    assert "cycle" in result.stderr

    result = rafs(
        "check", boot, "--blob-dir", sample.blob_dir, check=False, timeout=SUBPROCESS_TIMEOUT
    )
    assert_clean(result.returncode, result.stderr, [boot], "check")
    assert result.returncode == 1
    assert "cycle" in result.stderr

    result = rafs("inspect", boot, check=False, timeout=SUBPROCESS_TIMEOUT)
    assert_clean(result.returncode, result.stderr, [boot], "inspect")
    assert result.returncode == FormatError.exit_code

    # A path through the loop is still finite: it resolves, it does not spin.
    result = rafs("ls", boot, "/etc/ssl/etc/ssl", check=False, timeout=SUBPROCESS_TIMEOUT)
    assert_clean(result.returncode, result.stderr, [boot], "ls through the loop")


def test_cat_decodes_each_chunk_index_once(
    cli: Cli, rafs: RafsRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cat` of a file of many chunks is linear: no full index decode per block read."""
    data = random.Random(4).randbytes(4 << 20)
    with tarfile.open(tmp_path / "many.tar", "w") as tar:
        _add(tar, "many", data)
    layer = tmp_path / "layer"
    rafs("create", tmp_path / "many.tar", "-o", layer, "--chunk-size", "0x1000",
         "--compressor", "none")  # fmt: skip
    decoded: list[int] = []
    chunk_keys = RafsImage.chunk_keys

    def counting(
        self: RafsImage, nid: int, first: int = 0, stop: int | None = None
    ) -> list[tuple[int, int]]:
        keys = chunk_keys(self, nid, first, stop)
        decoded.append(len(keys))
        return keys

    monkeypatch.setattr(RafsImage, "chunk_keys", counting)
    code, out, err = cli(CAT, layer, "/many")
    assert (code, err) == (0, "")
    assert out == data
    assert sum(decoded) == len(data) // 0x1000


def test_sample_is_sound(rafs: RafsRunner, sample: Sample) -> None:
    """The untouched inputs pass, so every failure above comes from the damage."""
    assert rafs("check", sample.layer).returncode == 0
    assert rafs("check", sample.boot, "--blob-dir", sample.blob_dir).returncode == 0
    assert rafs("cat", sample.layer, "/big").stdout == BIG
    listing = rafs("ls", sample.layer, "-R").stdout.decode().split()
    assert listing == [
        "/",
        "/big",
        "/etc",
        "/etc/hosts",
        "/etc/ssl",
        "/etc/ssl/cert.pem",
        "/link",
        "/small",
    ]
