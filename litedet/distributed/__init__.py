"""Several devices on Ray: frame-parallel streaming (``stream``) and a detector split between two
devices at the cut a cost model chooses (``split``). Importing this package imports neither Ray
nor torch; a single worker runs in-process without Ray."""
