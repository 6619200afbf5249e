"""Basins of attraction of iterated maps (``basins``), class-dependent basins
(``class_basins``) and their robustness (``basin_robustness``), with the shared statistics
(``_class_stats``)."""
