"""`python -m glm_saver.cli ...`: the same as the `glm-saver` command."""

import sys

from glm_saver.cli.main import main

sys.exit(main())
