"""energyflow_ros.cli."""
