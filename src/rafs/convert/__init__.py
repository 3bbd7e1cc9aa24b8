"""Whole-image conversion between OCI and Nydus, from and to OCI layouts and registries."""

from rafs.convert.endpoints import ImageEndpoint, open_endpoint
from rafs.convert.image import ConvertOptions, ConvertSummary, convert_image, import_image

__all__ = [
    "ConvertOptions", "ConvertSummary", "ImageEndpoint", "convert_image", "import_image",
    "open_endpoint",
]  # fmt: skip
