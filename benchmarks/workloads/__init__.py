"""The benchmark workloads; each module has ``run(ctx) -> list of result records``."""
