"""All I/O: audio decoding, catalogs, feature shards, model bundles, label tables."""
