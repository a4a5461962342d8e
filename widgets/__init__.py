"""Qt views: gauge, plots, tables, what-if panel."""
