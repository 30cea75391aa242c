"""pi2i: personalized item-to-item retrieval (PI2I, WWW'26) as a production pipeline.

Core package: pure logic, no KFP or BentoML imports. Stages: ``loaders``/``synthetic`` (data),
``features`` (Feast), ``swing`` (IBS), ``sampling``/``model``/``train``/``scoring`` (PRS), ``metrics``/
``evaluate``/``gate``/``report`` (evaluation), ``registry`` (versions), ``rollout``/``rayjob`` (cluster).
"""

__version__ = "0.1.0"
