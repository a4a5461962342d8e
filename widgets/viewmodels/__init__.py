"""Qt-free view models: what the gauge, tray, table and what-if panel show, computed from
a StatusReport. Maths stays in ``kvwall.budget``; formatting only here."""
