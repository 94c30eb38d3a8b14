"""energyflow_ros.core."""
