"""The ``slimtorch`` command-line front end (one module per sub-command)."""
