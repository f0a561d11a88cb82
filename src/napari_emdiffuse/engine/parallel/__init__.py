"""Running block tasks on dask.distributed workers."""
