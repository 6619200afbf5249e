"""Output and input of results: atomic files (:mod:`~depthflow.io.files`), the NetCDF
writer (:mod:`~depthflow.io.netcdf`), the reader (:mod:`~depthflow.io.results`) and
provenance attributes (:mod:`~depthflow.io.provenance`)."""
