"""On-disk stores: the HDF5 feature cache and the results table."""
