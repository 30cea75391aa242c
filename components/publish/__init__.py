"""KFP component: publish (see component.py)."""
