"""The front door: what a person or a notebook touches first.

Owns the notebooks' setup (`notebook.setup()`, the first code cell of every notebook), the
evaluate notebook's session (`session`) and, later, the screen command. It sits on top: it may
import every other subpackage (protocol, offline, families, scale, bench), and none of them may
import it.
"""
