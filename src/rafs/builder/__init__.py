"""Build RAFS v6 images: sources (tar, directory) -> tree -> data blob + bootstrap -> layer."""
