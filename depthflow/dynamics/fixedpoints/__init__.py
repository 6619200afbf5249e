"""Fixed points of depth maps: Newton-Krylov search (``fixed_points``, ``_newton``), their
stability labels (``_stability``) and their sensitivity to the reference norm
(``norm_sensitivity``)."""
