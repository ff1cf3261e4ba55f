"""The protocol core: everything one model-dataset pair's evaluation needs, and nothing else.

Data flows one way: `config` (the params schema, strict validation) -> `preflight`
(every check that needs no model weights) -> `data` (the datasets, dispatching to one reader per
layout: `mimic`, `padchest`, `vindr`; box files: `boxes`; what they share: `reading`; `policy`
the label policy, `labels` the label hierarchy, `images` decoding; samples) -> `questions` (question sets and
paraphrases) -> `samples` (the run's samples and their prompts, decided once) -> `prompts` (chat-template rendering) -> `models` (loading) -> `engine` (batched
forward passes, conditions image / text_only / swap / blank / noise / twin) -> `identity` (record
keys, fingerprints, run hash) and `records` (the content-keyed resumable store, the output lock,
atomic final files) -> `taxonomy` (the paper's
definitions: answers, quadrants) -> `measures` (every rate with an interval, declared once) ->
`screening`, `ground_truth`, `intervals` (every bootstrap) -> `summary` (summary.json's measures),
beside `references` (the image-blind rate) -> `stats`
(across pairs) and `plots`; `run` drives one pair through a `Scorer`. `provenance` seeds and
records versions.

Must not import any other subpackage of lib (offline world, families, scale, bench, front):
they stand on it. The measures and `stats` import no torch.
"""
