"""Scale-out on Ray (optional: requirements-ray.txt): `ray_scorer.RayScorer` implements the
protocol's `run.Scorer` interface on an actor pool (lib.front.session picks it when params
`workers` > 1 or `ray_address` is set), `sweep` runs every pair as a Ray task.

May import lib.protocol only; ray itself is imported where it is used, since it is optional.
"""
