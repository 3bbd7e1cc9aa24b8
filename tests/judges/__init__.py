"""Judge tests: rafs against the real Nydus tools and their users (nydus-snapshotter under
containerd, BuildKit), built by `make judges`."""
