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
    MAX_YAML_DEPTH, no key twice in one mapping (safe_load keeps the last silently; LimitedYAML
    otherwise). Linear in the text's length."""
    open_collections = []   # per open collection: None for a sequence, a mapping's {"seen", "key"}
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise LimitedYAML(f"an alias (*{shorten(str(event.anchor), 20)}): aliases are not "
                              f"allowed in params, write the value out")
        if isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)) and open_collections \
                and open_collections[-1] is not None:
            _check_key(open_collections[-1], event)
        if isinstance(event, yaml.CollectionStartEvent):
            open_collections.append({"seen": set(), "key": True} if isinstance(event, yaml.MappingStartEvent) else None)
            if len(open_collections) > MAX_YAML_DEPTH:
                raise LimitedYAML(f"nested more than {MAX_YAML_DEPTH} deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            open_collections.pop()
    return yaml.safe_load(text)


def _check_key(mapping: dict, event) -> None:
    """A mapping's nodes alternate key, value: a scalar key seen before in it is refused."""
    if mapping["key"] and isinstance(event, yaml.ScalarEvent):
        if event.value in mapping["seen"]:
            raise LimitedYAML(f"the key {shorten(event.value, 40)!r} is given twice")
        mapping["seen"].add(event.value)
    mapping["key"] = not mapping["key"]
