"""`python -m pilot` from a source checkout or a pip install (archives use pilot.launcher)."""

import sys

from pilot.cli import main

sys.exit(main())
