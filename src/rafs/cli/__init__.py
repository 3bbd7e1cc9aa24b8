"""The `rafs` command line: argv parsing, printing and exit codes live only here.

Every `RafsError` becomes one line on stderr, `rafs: <message>`, and the exit code of its
kind; operating-system errors likewise name the file. Exit code 1 means a check found
problems, 2 a usage error.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence

from rafs import __version__
from rafs.cli import build, cache, content, convert, merge, mount, read, unpack
from rafs.errors import RafsError

EXIT_OS_ERROR = 11
EXIT_INTERRUPTED = 130


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rafs", description="Build, read, check and export Nydus (RAFS v6) images."
    )
    parser.add_argument("--version", action="version", version=f"rafs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build.register(commands)
    merge.register(commands)
    read.register(commands)
    unpack.register(commands)
    content.register(commands)
    cache.register(commands)
    convert.register(commands)
    mount.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except RafsError as exc:
        print(f"rafs: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return 0
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        print(f"rafs: {where}{reason}", file=sys.stderr)
        return EXIT_OS_ERROR
    except KeyboardInterrupt:
        print("rafs: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
