"""The Qt desktop app: entry point, poll thread, tray, window, notification delivery,
settings and logging. Only the modules that need Qt import it."""
