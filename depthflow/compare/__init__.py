"""Model vs model, layer by layer: cross-model linear CKA (standard and debiased) between
every depth of model A and every depth of model B per token view, the matched (same-depth)
similarity, the cross-model phase alignment (which depth of B best matches each depth of
A) and, when both models have the same token layout and width (a Raptor and its teacher),
the image-specific R^2 per depth. Definitions: ``docs/methods.md`` (model vs model).
"""

from depthflow.compare.cka import CrossCKA, cross_linear_cka
from depthflow.compare.run import VIEWS, compare_models, compare_states, random_copy

__all__ = ["CrossCKA", "cross_linear_cka", "VIEWS", "compare_models", "compare_states",
           "random_copy"]
