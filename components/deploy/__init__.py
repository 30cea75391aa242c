"""KFP component: deploy (see component.py)."""
