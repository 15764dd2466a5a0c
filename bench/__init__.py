"""Benchmark harness: our predict endpoint against the bare HTTP floor and in-process sktime."""
