"""The headless front ends: ``kvwall plan`` and ``kvwall status``. Never imports Qt."""
