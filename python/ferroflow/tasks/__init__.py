"""Built-in task classes: the ones ferroflow creates while a flow is built
(:mod:`ferroflow.tasks.core`), control flow (:mod:`ferroflow.tasks.control_flow`) and
resource managers (:mod:`ferroflow.tasks.resource_manager`)."""
