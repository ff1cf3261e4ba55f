"""The front door: what a person or a notebook touches first.

Owns the notebooks' setup (`notebook.setup()`, the first code cell of every notebook), the
evaluate notebook's session (`session`), the screen command (`cli`, `notebook_run`, `report`),
`make results` (`results`), `make compare-outputs` (`compare_trees`), the explorer, and
`callpath` (the path of a notebook's params through lib, read from the source:
`python -m lib.front.callpath notebooks/evaluate.py`). It sits on top: it may import every other
subpackage (protocol, offline, families, scale, bench), and none of them may import it.
"""
