"""livedmd: the live session data management daemon."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("livedm")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
