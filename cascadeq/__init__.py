"""cascadeq: the shared core that the producer, router and workers import.

Nothing here imports a role package; the CLI does, lazily.
"""

__version__ = "0.1.0"
