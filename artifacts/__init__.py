"""The bundle format: the one contract between rfc's compiler and its runtime.

Stdlib + msgpack only. The compiler writes bundles through this package and the runtime
reads them through it; nothing else is shared between the two halves.
"""

from rfc.artifacts.errors import BundleError, BundleVersionError, BundleIntegrityError
from rfc.artifacts.version import RFC_VERSION, BUNDLE_MAGIC, FORMAT_VERSION

__all__ = [
    "BundleError",
    "BundleVersionError",
    "BundleIntegrityError",
    "RFC_VERSION",
    "BUNDLE_MAGIC",
    "FORMAT_VERSION",
]
