"""energyflow_ros.nodes."""
