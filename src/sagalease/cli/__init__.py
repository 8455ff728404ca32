"""The ``sagalease`` command line: commands in ``_app``, rendering in ``_render``."""

from sagalease.cli._app import EXIT_FAIL as EXIT_FAIL
from sagalease.cli._app import EXIT_OK as EXIT_OK
from sagalease.cli._app import EXIT_UNAVAILABLE as EXIT_UNAVAILABLE
from sagalease.cli._app import EXIT_USAGE as EXIT_USAGE
from sagalease.cli._app import main as main

__all__ = ["EXIT_FAIL", "EXIT_OK", "EXIT_UNAVAILABLE", "EXIT_USAGE", "main"]
