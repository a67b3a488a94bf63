"""Example objectives that ship with hpod, registered under `hpod.objectives`."""
