"""The protocol's names, declared once: conditions, reliance checks, quadrants, answers, removal
modes. The engine, the measures and the params schema read them from here (definitions: the
docstrings of lib.protocol.taxonomy, lib.protocol.measures, lib.protocol.references and
lib.protocol.engine)."""

IMAGE, TEXT_ONLY = "image", "text_only"
REFERENCE, BLANK, NOISE = "reference", "blank", "noise"
TWIN = "twin"
RELIANCE_CHECKS = (REFERENCE, BLANK, NOISE)
CONDITIONS = (IMAGE, TEXT_ONLY) + RELIANCE_CHECKS + (TWIN,)
QUADRANTS = ("Ideal", "Fragile", "Dangerous", "Worst")
ANSWERS = ("yes", "no")
IMAGE_REMOVAL_MODES = ("none", "blank")
DANGEROUS_SPLIT = ("image-blind", "prior-coincident")
