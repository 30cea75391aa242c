"""KFP component: ingest (see component.py)."""
