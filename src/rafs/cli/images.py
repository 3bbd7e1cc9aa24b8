"""The IMAGE argument the read and mount commands share: a bootstrap or Nydus layer file, or a
reference `oci:PATH[:TAG]` / `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]` of a Nydus image
(with `--platform` to choose from an index and `--plain-http` for loopback registries).
Registry credentials come from the Docker config (`$DOCKER_CONFIG`, ~/.docker/config.json).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rafs.errors import InvalidArgument
from rafs.oci.nydus_image import parse_platform
from rafs.oci.reference import Reference, parse_reference
from rafs.reader.artifact import Artifact, open_artifact, open_v5
from rafs.reader.reference import RemoteOptions, ResolvedImage, is_reference, resolve
from rafs.reader.v5 import RafsV5Image
from rafs.registry import Credentials, docker_config_path, load_docker_credentials

IMAGE_HELP = ("bootstrap or Nydus layer file, or a Nydus image: oci:PATH[:TAG] or "
              "docker://HOST[:PORT]/REPO[:TAG|@DIGEST]")  # fmt: skip


def add_image_args(parser: argparse.ArgumentParser) -> None:
    """IMAGE and the options saying where its blobs are."""
    parser.add_argument("image", help=IMAGE_HELP)
    parser.add_argument("--blob-dir", type=Path,
                        help="folder of blobs named by blob id (image files only)")  # fmt: skip
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                        help="manifest to take from an image index (default: this host's)")
    parser.add_argument("--plain-http", action="store_true",
                        help="talk plain HTTP to the registry (loopback registries)")


def registry_credentials(reference: Reference) -> Credentials | None:
    """The Docker config's credentials for a `docker://` reference's registry."""
    if reference.transport != "docker" or reference.registry is None:
        return None
    return load_docker_credentials(docker_config_path(os.environ, Path.home()),
                                   reference.registry)  # fmt: skip


def remote_options(args: argparse.Namespace) -> RemoteOptions:
    if args.blob_dir is not None:
        raise InvalidArgument(f"{args.image}: --blob-dir applies to image files; a reference's "
                              "blobs are in its layout or registry")  # fmt: skip
    platform = parse_platform(args.platform) if args.platform else None
    credentials = registry_credentials(parse_reference(args.image))
    return RemoteOptions(platform, args.plain_http, credentials)


def resolve_image(args: argparse.Namespace) -> ResolvedImage | None:
    """The image a reference names, or None when IMAGE is a file."""
    if not is_reference(args.image):
        return None
    return resolve(args.image, remote_options(args))


def open_image(args: argparse.Namespace) -> Artifact:
    """IMAGE opened for reading: a file with its blob folder, or a reference."""
    resolved = resolve_image(args)
    if resolved is not None:
        return resolved.artifact()
    return open_artifact(Path(args.image), args.blob_dir)


def open_image_v5(args: argparse.Namespace) -> RafsV5Image | None:
    """IMAGE as a RAFS v5 bootstrap file, or None (references are always v6)."""
    return None if is_reference(args.image) else open_v5(Path(args.image))
