"""Benchmarks (`make bench`): `ways` times the ways of scoring a yes/no answer (generate() per
prompt, one forward per prompt, the engine) on the offline default models on the CPU and checks
they agree; `gpu` runs the same ways at the real models' shapes on one GPU (`make bench GPU=1`),
on the random-weight models of `random_models`, against the FLOP floor of `floor`. The GPU
measurements committed with the code are in `results/` (docs/results.md shows them).

May import every subpackage but front; nothing imports it.
"""
