"""Reward extraction checks and downstream RL on the benchmark tasks (torch, gymnasium, SB3)."""
