"""rafs: Nydus (RAFS v6) container images in pure Python."""

__version__ = "0.1.0"
