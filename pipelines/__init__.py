"""The pi2i daily pipeline: definition (``daily``), local run (``run_local``), cluster submit (``submit``)."""
