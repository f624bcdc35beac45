"""The product's speed and memory, measured against diffusers: `python -m benchmarks.NAME` from the repository root
(benchmarks/README.md). Not part of the installed package."""
