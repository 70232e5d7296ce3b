"""The Kubernetes side of sigma0: the same plan (sigma0.plan) driven by a kopf operator, one Job per step.

    jobs.py      pure: a Step of the plan → a batch/v1 Job; a Job and its pods → what the step did
    status.py    pure: TrainingCycle status ⇔ CycleState; conditions, printer-column figures
    queue.py     pure: one active cycle per AdapterRelease, in creation order
    releases.py  the AdapterRelease: incumbent, publish (resourceVersion precondition, Stale), rollback
    ledger.py    the GPU-hours ledger of a namespace (a ConfigMap), which weekly placement budgets are counted in
    executor.py  JobExecutor: one idempotent reconcile of one TrainingCycle (read the world, act, write status)
    janitor.py   finished cycles past their release's history limits or their TTL: a cleanup Job, then delete
    handlers.py  thin kopf handlers that call the executor; metrics.py the Prometheus figures
    operator.py  `sigma0 operator`: settings, login, kopf run
"""

from __future__ import annotations

GROUP = "sigma0.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CYCLES = "trainingcycles"
RELEASES = "adapterreleases"
