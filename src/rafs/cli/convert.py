"""`rafs convert SRC DST`: an OCI image to a Nydus image (or back with `--reverse`).

SRC and DST are `oci:PATH[:TAG]` or `docker://HOST[:PORT]/REPO[:TAG]`. Work happens in a
content store (`--store`, by default ~/.cache/rafs/store, or $XDG_CACHE_HOME/rafs/store, or
a running containerd's with `--containerd SOCKET [--namespace NS]`):
layers are fetched into it and their converted variants kept there, so converting the same
image again only pushes. Progress bars go to stderr when it is a terminal; the summary line
is printed at the end.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rafs.cli.images import registry_credentials
from rafs.cli.stores import add_store_arguments, cache_home, open_cache
from rafs.convert import ConvertOptions, ConvertSummary, convert_image, open_endpoint
from rafs.convert.image import Progress
from rafs.oci import parse_reference


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "convert", help="convert an OCI image to Nydus (or back)",
        description="Convert an image between OCI and Nydus; SRC and DST are oci:PATH[:TAG] "
        "or docker://HOST[:PORT]/REPO[:TAG].",
    )  # fmt: skip
    parser.add_argument("source", metavar="SRC")
    parser.add_argument("target", metavar="DST")
    parser.add_argument("--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]",
                        help="convert only this platform of an index (repeatable; "
                        "default: all)")  # fmt: skip
    parser.add_argument("--reverse", action="store_true",
                        help="Nydus image -> OCI image with gzip layers")  # fmt: skip
    parser.add_argument("--with-referrer", action="store_true",
                        help="set the new manifest's subject to the source manifest")  # fmt: skip
    parser.add_argument("--plain-http", action="store_true",
                        help="talk HTTP, not HTTPS, to the registries (loopback ones)")  # fmt: skip
    add_store_arguments(parser, required=False,
                        store_help="work content store (default: ~/.cache/rafs/store)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, metavar="N",
                        help="layers fetched and converted at once")  # fmt: skip
    parser.set_defaults(run=run)


def run(args: Any) -> int:
    source_ref, target_ref = parse_reference(args.source), parse_reference(args.target)
    cache = open_cache(args, create=True, default=cache_home() / "store")
    options = ConvertOptions(tuple(args.platform), args.reverse, args.with_referrer,
                             max(1, args.jobs))  # fmt: skip
    source = open_endpoint(source_ref, plain_http=args.plain_http,
                           credentials=registry_credentials(source_ref))  # fmt: skip
    try:
        target = open_endpoint(target_ref, plain_http=args.plain_http, create=True,
                               credentials=registry_credentials(target_ref))  # fmt: skip
        try:
            with _progress_bar() as progress:
                summary = convert_image(source, target, cache, options, progress)
        finally:
            target.close()
    finally:
        source.close()
    print(_summary_line(args.source, args.target, summary))
    return 0


@contextmanager
def _progress_bar() -> Iterator[Progress | None]:
    """A rich progress bar of layers on stderr, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), transient=True) as bar:  # fmt: skip
        task = bar.add_task("layers", total=0)

        def update(event: str, count: int) -> None:
            if event == "layers":
                bar.update(task, total=(bar.tasks[0].total or 0) + count)
            else:
                bar.advance(task, count)

        yield update


def _size(count: int) -> str:
    """`count` bytes in B, KiB, MiB or GiB."""
    if count < 1024:
        return f"{count} B"
    value, unit = count / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def _summary_line(source: str, target: str, summary: ConvertSummary) -> str:
    result = summary.result.digest if summary.result is not None else "-"
    return (f"{source} -> {target}: {summary.manifests} manifest(s), {summary.layers} layers "
            f"({summary.converted} converted now), {_size(summary.bytes_before)} -> "
            f"{_size(summary.bytes_after)} in {summary.seconds:.1f} s; {result}")  # fmt: skip
