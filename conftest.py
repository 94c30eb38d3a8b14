"""Repository-root conftest: makes ``energyflow_ros`` and ``test`` importable from a checkout."""
