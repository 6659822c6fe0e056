"""`python -m auditor.cli`: what the service's job runner starts."""

import sys

from auditor.cli import main

sys.exit(main())
