"""Params text read as YAML within limits: no alias (`*name`: a few hundred bytes of nested
aliases expand into gigabytes), nesting at most MAX_YAML_DEPTH deep; the checks walk the parser's
events, linear in the text's length. lib.protocol.config reads every params file and `-p` value
through here."""
from __future__ import annotations

import yaml

MAX_YAML_DEPTH = 16


def shorten(text: str, width: int = 80) -> str:
    """``text`` cut to ``width`` characters ("..." marks the cut)."""
    return text if len(text) <= width else text[:width - 3] + "..."


class LimitedYAML(yaml.YAMLError):
    """YAML beyond the limits of params (an alias, too deep a nesting)."""


def parse_yaml(text: str):
    """``yaml.safe_load`` of params text, after checking its events: no alias, nesting at most
    MAX_YAML_DEPTH (LimitedYAML otherwise). Linear in the text's length."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise LimitedYAML(f"an alias (*{shorten(str(event.anchor), 20)}): aliases are not "
                              f"allowed in params, write the value out")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise LimitedYAML(f"nested more than {MAX_YAML_DEPTH} deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return yaml.safe_load(text)
