"""energyflow_ros.export."""
