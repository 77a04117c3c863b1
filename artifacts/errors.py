"""Typed errors raised while reading or writing a bundle."""


class BundleError(Exception):
    """A bundle is missing, malformed or unusable."""


class BundleVersionError(BundleError):
    """The bundle was written in a format major version this reader does not understand."""


class BundleIntegrityError(BundleError):
    """A file in the bundle does not match the hash its manifest records."""

    def __init__(self, message: str, files: list[str]):
        super().__init__(message)
        self.files = files
