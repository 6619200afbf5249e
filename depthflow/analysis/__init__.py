"""``depthflow analyze``: the orchestrator, its plug-in protocol and registry.

:mod:`~depthflow.analysis.context` defines what a plug-in sees (:class:`AnalysisContext`)
and must do (:class:`Analysis`); :mod:`~depthflow.analysis.registry` builds the plug-ins;
:mod:`~depthflow.analysis.summaries` writes the root group; :mod:`~depthflow.analysis.run`
streams a model over images and writes one NetCDF file.
"""
