"""llama-server command lines: the option index (options), parsing (parse), editing (edit).

``kvwall.budget.config`` holds the parsed result, ``ServerConfig``; import the functions
from their modules (``parse.parse_command_line``, ``edit.render_command``). This package
re-exports nothing, so that ``config`` can use ``edit`` without an import cycle.
"""
