"""Consistent-but-dangerous: per-sample safety taxonomy for medical vision-language models.

Subpackages by role; dependencies point one way (tests/test_architecture.py checks it):

* `protocol` - the evaluation path: params, readers, questions, model loading, the scoring
  engine, records, the taxonomy and its statistics. Imports none of the others.
* `families` - real model families: chat templates, tiny checkpoints of the real classes,
  the LLaVA-Rad converter, the `make paper` pre-check. Uses the protocol.
* `offline` - the offline world `make all` runs: synthetic datasets in the real layouts, the
  default model family trained here, the consistency LoRA. Uses the protocol and families.
* `scale` - Ray scale-out: a scorer implementing the protocol's `Scorer` interface, sweeps.
* `bench` - timing the ways of scoring (generate vs one forward vs the engine).
* `front` - what people and notebooks touch first: notebook setup, the evaluate notebook's
  session, the command line (`python -m lib`). May use all of the above.
"""
