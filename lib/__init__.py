"""Consistent-but-dangerous: per-sample safety taxonomy for medical vision-language models.

The data flows one way: params -> config -> data (samples) -> questions/prompts -> engine ->
records -> taxonomy -> stats. Each module owns one noun; see README.md for the protocol.
"""
