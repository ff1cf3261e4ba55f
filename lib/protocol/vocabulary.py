"""The protocol's names, declared once: conditions, reliance checks, local tests, quadrants,
answers, removal modes. The engine, the measures and the params schema read them from here (definitions: the
docstrings of lib.protocol.taxonomy, lib.protocol.measures, lib.protocol.references,
lib.protocol.local_tests and lib.protocol.engine)."""

IMAGE, TEXT_ONLY = "image", "text_only"
REFERENCE, BLANK, NOISE = "reference", "blank", "noise"
TWIN = "twin"
RELIANCE_CHECKS = (REFERENCE, BLANK, NOISE)
# the local counterfactual tests (lib.protocol.local_tests): each test with its control
OCCLUDE, OCCLUDE_CONTROL = "occlude", "occlude_control"
FOLLOWUP, FOLLOWUP_CONTROL = "followup", "followup_control"
LOCAL_TESTS = (OCCLUDE, FOLLOWUP)             # what params ``local_tests`` turns on
LOCAL_CHECKS = (OCCLUDE, OCCLUDE_CONTROL, FOLLOWUP, FOLLOWUP_CONTROL)
CONDITIONS = (IMAGE, TEXT_ONLY) + RELIANCE_CHECKS + (TWIN, OCCLUDE, OCCLUDE_CONTROL, FOLLOWUP)
QUADRANTS = ("Ideal", "Fragile", "Dangerous", "Worst")
ANSWERS = ("yes", "no")
IMAGE_REMOVAL_MODES = ("none", "blank")
DANGEROUS_SPLIT = ("image-blind", "prior-coincident")
