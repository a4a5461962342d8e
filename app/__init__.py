"""Qt glue: entry points, poller thread, tray, window, notifications, settings.

Importing this package never imports Qt; the modules that need it do so themselves.
"""
