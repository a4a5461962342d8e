"""``python -m kvwall.app`` runs the ``kvwall`` command."""

import sys

from kvwall.app.cli import main

sys.exit(main())
