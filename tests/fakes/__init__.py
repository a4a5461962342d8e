"""Fakes of the outside world that are exactly as strict as the real thing (NVML...)."""
