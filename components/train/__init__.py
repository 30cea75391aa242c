"""KFP component: train (see component.py)."""
