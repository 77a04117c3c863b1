"""Version numbers of rfc and of the bundle format."""

RFC_VERSION = "0.1.0"

# Written first in every manifest; the reader refuses anything else.
BUNDLE_MAGIC = "rfc-bundle"

# (major, minor). A reader accepts any minor of its own major and refuses other majors:
# a minor bump only adds optional fields, a major bump changes meaning.
# 2.1: the optional `provenance` file (artifacts/provenance.py).
FORMAT_VERSION = (2, 1)
