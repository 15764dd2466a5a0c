"""Where jobs run: local processes (default) or a Dask distributed cluster."""
