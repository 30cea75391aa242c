"""KFP component: samples (see component.py)."""
