"""``python -m icm_core.cli`` = the ``icm`` command (torchrun's ``-m icm_core.cli`` too)."""

import sys

from icm_core.cli.main import main

sys.exit(main())
