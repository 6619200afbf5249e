"""depthflow: Vision Transformers as dynamical systems over depth."""
__version__ = "0.1.0"
