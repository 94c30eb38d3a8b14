"""Test-suite settings: one torch thread (tests train small models; threads only contend)."""

import os

import torch

torch.set_num_threads(1)
os.environ.setdefault('ROS_LOG_DIR', os.path.join(os.environ.get('TMPDIR', '/tmp'),
                                                  'energyflow_ros_test_logs'))
