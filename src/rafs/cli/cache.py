"""`rafs cache`: layer refs in a content store, and BuildKit's MergeNydus over them.

    rafs cache import IMAGE --store DIR       IMAGE is oci:PATH[:TAG]; prints the top ref's
                                              id (each layer's ref on stderr)
    rafs cache ls --store DIR                 every ref: id, parent, chain id, primary blob
    rafs cache merge-nydus REF --store DIR    converts the chain's layers to Nydus (once),
                                              merges them; prints the bootstrap layer's
                                              descriptor as JSON

`--containerd SOCKET [--namespace NS]` instead of `--store DIR` works in a running
containerd's content store (`cli/stores.py` says where the ref records then go). The cache
keeps its records in DIR/cache/ beside the content store's own files. The Nydus layer blobs
merge-nydus uses are in the store, named by digest, so the bootstrap with
`--blob-dir DIR/blobs/sha256` is a complete image.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rafs.cache import merge_nydus
from rafs.cli.stores import add_store_arguments, open_cache
from rafs.convert import import_image, open_endpoint
from rafs.errors import InvalidArgument
from rafs.oci import parse_reference


def register(commands: Any) -> None:
    cache = commands.add_parser(
        "cache", help="layer refs over a content store; merge-nydus",
        description="A BuildKit-style cache of layer refs in a content store directory.",
    )  # fmt: skip
    sub = cache.add_subparsers(dest="cache_command", required=True, metavar="COMMAND")
    imports = sub.add_parser("import", help="put an image's layers in the store as a ref chain")
    imports.add_argument("image", metavar="IMAGE", help="oci:PATH[:TAG]")
    imports.set_defaults(run=run_import)
    ls = sub.add_parser("ls", help="list refs")
    ls.set_defaults(run=run_ls)
    merge = sub.add_parser("merge-nydus", help="merge a ref chain's Nydus layers into a "
                           "bootstrap layer; print its descriptor")  # fmt: skip
    merge.add_argument("ref", metavar="REF", help="ref id (from import or ls)")
    merge.set_defaults(run=run_merge_nydus)
    for command in (imports, ls, merge):
        add_store_arguments(command, required=True, store_help="content store root")


def run_import(args: Any) -> int:
    reference = parse_reference(args.image)
    if reference.transport != "oci" or reference.path is None:
        raise InvalidArgument(f"{args.image}: cache import reads oci:PATH[:TAG] layouts")
    cache = open_cache(args, create=True)
    source = open_endpoint(reference)
    try:
        top = import_image(source, cache)
    finally:
        source.close()
    chain = top.layer_chain()
    for number, ref in enumerate(chain, 1):
        print(f"layer {number}/{len(chain)} {ref.record.blob}: ref {ref.id}", file=sys.stderr)
    print(top.id)
    return 0


def run_ls(args: Any) -> int:
    for ref in open_cache(args).refs():
        record = ref.record
        print(f"{record.id} parent={record.parent or '-'} chain={record.chain_id} "
              f"blob={record.blob} {record.media_type}")  # fmt: skip
    return 0


def run_merge_nydus(args: Any) -> int:
    desc = merge_nydus(open_cache(args).get(args.ref))
    print(json.dumps(desc.to_json(), indent=2))
    return 0
