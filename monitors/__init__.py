"""What is measured: NVML, host/unified memory, AMD sysfs, llama-server discovery and
HTTP, GGUF headers. Pure Python; never imports Qt."""
