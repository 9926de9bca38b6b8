"""Built-in task classes: the ones ferroflow creates while a flow is built
(:mod:`ferroflow.tasks.core`) and control flow (:mod:`ferroflow.tasks.control_flow`)."""
