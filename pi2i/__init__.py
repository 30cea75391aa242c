"""pi2i: personalized item-to-item retrieval (PI2I, WWW'26) as a production pipeline.

Core package: pure logic, no KFP or BentoML imports. Stages: ``data`` (loaders, synthetic data, Feast
features), ``ibs`` (the Swing index), ``prs`` (sampling, model, training, scoring), ``methods`` (every retrieval
method behind one interface), ``augment`` (LLM-I2I), ``evaluation`` (metrics, gate, report), ``publish``
(versions), ``online`` (serving runtime), ``cluster`` (rollout, RayJob), ``cli``.
"""

import os

# OpenMP threads that finish a parallel region sleep instead of spinning (set before torch or numba load
# libgomp, which reads it once; an explicit setting wins). Spinning threads burn the CPU share the real work
# needs when other processes compete for the cores: measured on 2 cores beside two busy processes, PRS training
# ran 1.2-1.5k samples/s at ~190 CPU ms per step with spinning and 2.2-2.4k at ~100 ms without; quiet, the
# same (benchmarks/bench_train.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
