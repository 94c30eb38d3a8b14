"""energyflow_ros.data."""
