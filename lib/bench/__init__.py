"""Benchmarks: `ways` times the ways of scoring a yes/no answer (generate() per prompt, one
forward per prompt, the engine) on the offline default models and checks they agree (`make
bench`); bench/gpu_bench.py (outside the package) is its GPU counterpart.

May import every subpackage but front; nothing imports it.
"""
