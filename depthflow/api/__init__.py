"""Entry points that resolve what a user named: :func:`~depthflow.api.loader.load_model`
(checkpoints, named models, modules, Raptor directories) and one library call per CLI
command (:mod:`~depthflow.api.workflows`). ``depthflow/__init__.py`` re-exports the public
names."""
