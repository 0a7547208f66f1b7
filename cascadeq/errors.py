"""The base of errors a person must fix (configuration, files, environment)."""


class ConfigError(Exception):
    """The CLI prints these as one line, without a traceback."""
