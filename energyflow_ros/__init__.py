"""energyflow_ros: energy-based imitation-learning policies for ROS 2 arms."""
