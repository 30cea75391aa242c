"""KFP component: swing (see component.py)."""
