"""energyflow_ros.sim."""
