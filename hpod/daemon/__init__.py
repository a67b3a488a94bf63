"""The daemon: service lifecycle, intake (queue and HTTP), study loops."""
