"""A FUSE (pyfuse3 on trio) read-only filesystem over `rafs.reader`."""
