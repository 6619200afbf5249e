"""Data in and out of a model: image sources (:mod:`~depthflow.data.images`; large collections
read in place, :mod:`~depthflow.data.collections`), trajectories streamed through a model
(:mod:`~depthflow.data.trajectory`) and the token measures computed on them
(:mod:`~depthflow.data.tokens`)."""
