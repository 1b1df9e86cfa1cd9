"""callbackd's process: CLI, configuration, lifecycle, sources, dialers and HTTP.

Not the python-daemon distribution: callbackd never depends on it (systemd supervises us).
"""

__version__ = "0.1.0"
