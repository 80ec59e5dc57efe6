"""``python -m simgen.cli`` runs the ``simgen`` command."""

import sys

from simgen.cli import main

sys.exit(main())
