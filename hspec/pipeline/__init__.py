"""Layer 3: the paper's pipeline.

Datasets and subsamples, the networks, the training recipe and its run files,
learning-rate selection, the Zarr store, configuration checks, output locks, the
spectrum job and the ``hspec`` command line that the workflow's rules call.
"""
