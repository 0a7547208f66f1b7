"""The base of errors a person must fix (configuration, files, environment), and the exit
codes the ``cascadeq`` command reports errors with (listed in every --help)."""

EXIT_FAILED = 1
EXIT_USAGE = 2  # argparse's own code for a bad flag, so every "fix your input" shares it
EXIT_REJECTED = 3
EXIT_REQUEST_FAILED = 4
EXIT_NOT_READY = 5
EXIT_UNKNOWN_ID = 6
EXIT_NO_REDIS = 7


class ConfigError(Exception):
    """The CLI prints these as one line, without a traceback."""
