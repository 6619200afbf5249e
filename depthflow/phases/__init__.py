"""Phase structure over depth: layer x layer similarity (:mod:`~depthflow.phases.similarity`),
segmentations (:mod:`~depthflow.phases.segmentation`), the layer-swap test
(:mod:`~depthflow.phases.swap`), the streaming analysis and its datasets
(:mod:`~depthflow.phases.analysis`, :mod:`~depthflow.phases.datasets`)."""
