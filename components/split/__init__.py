"""KFP component: split (see component.py)."""
