"""energyflow_ros.nodes: thin rclpy adapters (rclpy, numpy and onnxruntime only; no torch).

``policy_node`` (lifecycle) runs an exported policy at the control rate behind a safety
filter; ``reward_node`` (lifecycle) publishes the energy reward of executed chunks;
``sim_node`` wraps a benchmark task as a ros2_control-like robot. Shared pieces: ``params``
(parameter declarations, QoS), ``messages`` (message <-> array), ``observers`` (observation
subscriptions), ``worker`` (the background planner), ``model_loader``, ``diagnostics``.
"""
