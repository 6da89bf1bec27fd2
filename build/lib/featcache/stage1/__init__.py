"""Stage 1: (optionally) adapt a backbone to the train rows, then run it once over every row into
the HDF5 feature cache, keyed by a fingerprint of everything that changes the features."""
