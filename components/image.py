"""The one place the pipeline's container image is pinned (built from the repo's ``Dockerfile``)."""

from pi2i import __version__

#: Image every component runs on: the project installed as a non-root user (CPU torch). Bump with the version.
PINNED_IMAGE = f"ghcr.io/pi2i/pi2i:{__version__}"
