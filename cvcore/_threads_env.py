"""OpenMP's wait policy, set before torch loads its OpenMP runtime (imported first by each package).

torch's CPU kernels run on OpenMP threads that, by default, spin while they wait for work. Two
cvflow processes (or cvflow beside any other CPU job) on the same cores then spin against each
other: measured on 2 cores, two ResNet-18 trainings side by side ran at 16-18 images/s each
against 97 alone, and at 72-82 each with ``OMP_WAIT_POLICY=PASSIVE``, which costs nothing alone
(96-106 images/s, 15 % less CPU time) (benchmarks/RESULTS.md, "Pipeline demo"). A value the user
set is kept. It only takes effect when this runs before torch is first imported in the process.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
