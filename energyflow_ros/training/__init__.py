"""energyflow_ros.training."""
