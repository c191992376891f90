"""Prefect flows: thin wiring of qscope_eval library calls into tasks (DESIGN §7).

`flows.audit.audit` is the scheduled audit (deployment `qscope-audit` in
prefect.yaml). Importing this package sets offline-friendly Prefect defaults
unless the environment already says otherwise: no telemetry, and a longer
start-up timeout for the local ephemeral server (CI machines are slow). They
only take effect if Prefect has not been imported yet; the CLI also sets
`PREFECT_HOME` (default `./.prefect`) before importing Prefect.
"""

from qscope_eval.jobs.audit import prefect_env

prefect_env(home=False)
