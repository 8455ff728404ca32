"""``python -m sagalease.cli``: the command line."""

from sagalease.cli import main

raise SystemExit(main())
