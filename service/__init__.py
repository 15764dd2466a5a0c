"""forecast-service: serve sktime forecasters from a versioned model registry."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("forecast-service")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"
