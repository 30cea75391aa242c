"""KFP v2 components: one package per pipeline step, each a thin adapter from KFP artifacts to a pi2i/ function.

Every component runs on the project's own image (:data:`components.image.PINNED_IMAGE`), which installs the
project, so ``install_kfp_package=False`` and the component body just imports ``pi2i``.
"""
