"""energyflow_ros.runtime."""
