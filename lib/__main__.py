"""`python -m lib evaluate PARAMS.yaml ...` and `python -m lib screen ...` (lib/front/cli.py)."""
import sys

from lib.front.cli import main

sys.exit(main())
