"""On-disk records of RAFS v6 (EROFS-compatible), Nydus data blobs and RAFS v5.

Only byte layouts live here: every record is a frozen dataclass with `pack()`,
`unpack(buf, offset)` and `validate()`. No policy, no I/O. All integers are little-endian.
"""
