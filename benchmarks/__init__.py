"""Benchmark scripts (`python benchmarks/bench_*.py`); a package so that they can share helpers
(`benchmarks.bench_loader`) and so that the import layers (pyproject.toml, `[tool.importlinter]`) see them."""
