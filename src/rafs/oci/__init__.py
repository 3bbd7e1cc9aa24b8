"""OCI images: media types and annotation keys (`constants`), descriptors, manifests,
indexes and configs that round-trip unknown fields, image layouts and references."""

from rafs.oci.descriptor import Descriptor, Platform
from rafs.oci.layout import OCILayout
from rafs.oci.manifest import History, ImageConfig, Index, Manifest, parse_manifest
from rafs.oci.reference import Reference, parse_reference

__all__ = [
    "Descriptor",
    "History",
    "ImageConfig",
    "Index",
    "Manifest",
    "OCILayout",
    "Platform",
    "Reference",
    "parse_manifest",
    "parse_reference",
]
