"""The `rafs` command line: argv parsing, printing and exit codes live only here.

Every `RafsError` becomes one line on stderr, `rafs: <message>`, and the exit code of its
kind; operating-system errors likewise name the file. Exit code 1 means a check found
problems, 2 a usage error.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Sequence

from rafs import __version__
from rafs.errors import RafsError

EXIT_OS_ERROR = 11
EXIT_INTERRUPTED = 130

COMMAND_MODULES = {
    "create": "build", "merge": "merge", "inspect": "read", "ls": "read", "cat": "read",
    "check": "read", "export": "read", "unpack": "unpack", "content": "content",
    "cache": "cache", "convert": "convert", "mount": "mount", "umount": "mount",
}  # fmt: skip
"""The module of `rafs.cli` that registers each command. A run imports only its command's
module: importing every one (registry, containerd, FUSE clients...) costs more than some
whole commands take."""


def make_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for `command`, or for every command (help, unknown commands)."""
    parser = argparse.ArgumentParser(
        prog="rafs", description="Build, read, check and export Nydus (RAFS v6) images."
    )
    parser.add_argument("--version", action="version", version=f"rafs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command in COMMAND_MODULES:
        modules = [COMMAND_MODULES[command]]
    else:
        modules = list(dict.fromkeys(COMMAND_MODULES.values()))
    for module in modules:
        importlib.import_module(f"rafs.cli.{module}").register(commands)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word: the first argument that is not an option."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = make_parser(_command_of(arguments)).parse_args(arguments)
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
