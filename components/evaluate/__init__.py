"""KFP component: evaluate (see component.py)."""
