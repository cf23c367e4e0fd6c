"""xtm-composer: runs OpenCTI managed connectors on container orchestrators."""

from importlib import metadata

try:
    __version__ = metadata.version("xtm-composer")
except metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
