"""Read Nydus images: open any artifact, walk the tree, read file data, check, export."""
