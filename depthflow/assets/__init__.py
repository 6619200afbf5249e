"""Files that ship inside the package: the embedded default model (a digits ViT)."""
