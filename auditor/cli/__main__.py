"""`python -m auditor.cli`: what the service's job runner starts."""

import sys

from auditor.cli.main import main

sys.exit(main())
