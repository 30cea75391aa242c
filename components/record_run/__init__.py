"""KFP component: record_run (see component.py)."""
